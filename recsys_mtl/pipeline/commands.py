"""`recsys-mtl pipeline run CONFIG [--from D1] [--to D2]` and `pipeline status CONFIG`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="batch pipelines (daily incremental training with an NE gate)")
    psub = p.add_subparsers(dest="pipeline_command", metavar="PIPELINE_COMMAND", required=True)
    r = psub.add_parser("run", help="run (or resume) the daily pipeline over a date range")
    r.add_argument("config", help="pipeline YAML, e.g. pipelines/daily.yaml")
    r.add_argument("--from", dest="start", help="first date (YYYY-MM-DD; default: the first partition)")
    r.add_argument("--to", dest="end", help="last date to train on (default: the second-to-last partition)")
    r.set_defaults(func=_run)
    s = psub.add_parser("status", help="what the pipeline has done so far, per date")
    s.add_argument("config")
    s.set_defaults(func=_status)


def _run(args: argparse.Namespace) -> int:
    from recsys_mtl.pipeline.daily import DailyPipeline, format_summary
    from recsys_mtl.train.commands import quiet_library_logs

    quiet_library_logs()
    pipeline = DailyPipeline.load(args.config)
    outcomes = pipeline.run(args.start, args.end)
    print()
    print(format_summary(outcomes))
    champion = pipeline._registry().champion()
    if champion:
        print(f"\n{pipeline.config.registry.model_name}@{pipeline.config.registry.alias} = version {champion.version} "
              f"(run {champion.run_id})")
    return 0


def _status(args: argparse.Namespace) -> int:
    from recsys_mtl.pipeline.daily import DailyPipeline
    from recsys_mtl.pipeline.state import STEPS

    pipeline = DailyPipeline.load(args.config)
    for date in pipeline.partitions:
        done = [s for s in STEPS if pipeline.store.get(date, s) is not None]
        print(f"{date}: {', '.join(done) if done else 'not started'}")
    return 0
