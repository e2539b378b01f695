"""`recsys-mtl bench train`: the same model trained two ways in one process, throughputs and ratio.

- plain: a minimal TorchRec loop: the DMP-sharded model, batches read into
  memory beforehand, equal weights (sum of masked BCE), forward/backward/step.
- framework: `Trainer.fit()`: ParquetStream reading during training,
  TrainPipelineSparseDist, all-reduced per-task losses, the weighting module,
  per-step task-loss records (train_log.jsonl) and the progress accounting.

Both run the same steps on the same data; the first `--warmup` steps of each
are not timed. Each run times both loops back to back, in ABBA order (plain
then framework, then framework then plain, ...), so background load and drift
hit both alike; the headline is the median over runs of each run's ratio.
Target: framework >= 90% of plain.

`--preset dlrm` is the GPU-size workload: 64 tasks, batch 8192, each of the 26
sparse features with its own table of 1,000,000 rows x 128 (26 tables, 13.3 GB
of fp32 weights), configs/bench_dlrm.yaml's model, 4 loader workers.

`--precision fp32 tf32 bf16` and `--weighting equal go4align` time every
combination (train.precision and weighting.method of both loops; the plain loop
always weighs equally) and end with a table: throughputs, framework/plain, each
combination's final-step loss against the first one's (same data, same seed), and
GO4Align's framework throughput against equal weighting's at the same precision
(target >= 0.99).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from recsys_mtl.bench import CONFIGS


# defaults of the options a preset may change (None in the parser: "not given")
DEFAULTS = {"config": str(CONFIGS / "synthetic.yaml"), "rows": 200_000, "tasks": 32, "table_scale": 0.01,
            "batch_size": 2048, "steps": 60, "warmup": 5}
# DLRM-size workload: every sparse feature its own table of table_rows x table_dim
PRESETS = {
    "dlrm": {"config": str(CONFIGS / "bench_dlrm.yaml"), "tasks": 64, "batch_size": 8192, "table_scale": 1.0,
             "rows": 1_600_000, "steps": 100, "warmup": 10, "table_rows": 1_000_000, "table_dim": 128,
             "overrides": ["data.num_workers=4"], "needs_gpu": True},
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="dlrm: 26 tables of 1M rows x 128, 64 tasks, batch 8192 (for a GPU); "
                        "its values apply to the options below that are not given")
    p.add_argument("--config", help=f"training config (model, optimizers); default {d['config']}")
    p.add_argument("--data", type=Path, default=None, help="Parquet dataset with _feature_spec.yaml (default: generate)")
    p.add_argument("--rows", type=int, help=f"rows to generate when --data is not given (default {d['rows']:,})")
    p.add_argument("--tasks", type=int, help=f"tasks to generate when --data is not given (default {d['tasks']})")
    p.add_argument("--table-scale", type=float, help=f"table size factor for generated data (default {d['table_scale']})")
    p.add_argument("--batch-size", type=int, help=f"default {d['batch_size']}")
    p.add_argument("--steps", type=int, help=f"timed steps per run, a multiple of --warmup (default {d['steps']})")
    p.add_argument("--warmup", type=int, help=f"untimed steps before them (default {d['warmup']})")
    p.add_argument("--repeat", type=int, default=5, help="runs of each loop, back to back in ABBA order (default %(default)s)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--precision", nargs="+", choices=["fp32", "tf32", "bf16"], default=None,
                   help="train.precision values to time, each in both loops (default: the config's)")
    p.add_argument("--weighting", nargs="+", default=None, metavar="METHOD",
                   help="weighting methods of the framework loop to time, e.g. equal go4align (default: the config's)")


def resolve_arguments(args: argparse.Namespace) -> None:
    """Options not given take the preset's value, else the default; a preset's overrides go first."""
    preset = PRESETS[args.preset] if args.preset else {}
    for key, default in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, preset.get(key, default))
    args.overrides = list(preset.get("overrides", [])) + list(args.overrides)


def one_table_per_feature(spec_path: Path, out: Path, rows: int, dim: int) -> Path:
    """A copy of the spec at `spec_path` where each sparse feature has its own `rows` x `dim` table.

    The generated ids stay valid: every synthetic table is at most `rows` (1M) long and
    hashed ids are taken modulo the table size.
    """
    import yaml

    from recsys_mtl.config.loader import read_yaml

    raw = read_yaml(spec_path)
    tables = {}
    for feature in raw["sparse"]:
        source = raw["tables"][feature["table"]]
        if source["num_embeddings"] > rows:
            raise SystemExit(f"bench train: {spec_path}: table {feature['table']!r} has "
                             f"{source['num_embeddings']} rows, more than the preset's {rows}")
        tables[f"t_{feature['name']}"] = {"num_embeddings": rows, "embedding_dim": dim,
                                          "pooling": source.get("pooling", "sum")}
        feature["table"] = f"t_{feature['name']}"
    raw["tables"] = tables
    raw["name"] = f"{raw.get('name', 'spec')}_one_table_per_feature_{rows}x{dim}"
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def _config(args: argparse.Namespace, data: Path, spec: Path, out: Path, steps: int, extra: list[str] = ()):
    from recsys_mtl.config.train import TrainConfig

    overrides = [
        f"data.train_path={data}", f"data.spec={spec}", "data.eval_path=null",
        f"data.batch_size={args.batch_size}", f"train.max_steps={steps}", "train.epochs=1000",
        f"train.log_every={args.warmup}", "train.eval_every=0", "train.progress_bar=false",
        f"train.output_dir={out}", "train.checkpoint.every=0", "train.checkpoint.resume=false",
        "train.checkpoint.at_end=false",  # a DLRM-size run would write GBs of tables per timed run
        "train.deterministic=false",
    ] + list(args.overrides) + list(extra)
    return TrainConfig.load(args.config, overrides)


def plain_loop(config, spec, env, batches, warmup: int, steps: int) -> tuple[float, float]:
    """Minimal TorchRec: DMP model, fused embedding optimizer + Adam, equal weights. (Samples/s, last loss)."""
    import torch

    from recsys_mtl.bench.model_step import build_plain_step

    step = build_plain_step(config, spec, env, batches[: warmup + steps])
    start = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            if env.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        loss = step()
    last = loss.item()
    return steps * config.data.batch_size * env.world_size / (time.perf_counter() - start), last


def framework_loop(config, spec, env, warmup: int, steps: int) -> tuple[float, float]:
    """Trainer.fit() over the Parquet stream; timed between the log flushes at `warmup` and the end.
    (Samples/s, the last step's weighted loss)."""
    from recsys_mtl.train.trainer import Trainer, TrainerCallback

    marks: dict[int, float] = {}
    losses: dict[int, float] = {}

    class Clock(TrainerCallback):
        def on_log(self, trainer, records):
            marks[records[-1]["step"]] = time.perf_counter()
            losses[records[-1]["step"]] = records[-1]["loss"]

    Trainer(config, spec=spec, env=env, callbacks=[Clock()]).fit()
    first, last = min(marks), max(marks)
    if first != warmup or last != warmup + steps:
        raise RuntimeError(f"bench: expected log flushes at steps {warmup} and {warmup + steps}, got {sorted(marks)}")
    return steps * config.data.batch_size * env.world_size / (marks[last] - marks[first]), losses[last]


def _release() -> None:
    """Free the last loop's model before the next one builds its own (two DLRM-size models do not fit)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run(args: argparse.Namespace) -> int:
    from recsys_mtl.bench.model_step import bench_data
    from recsys_mtl.config.features import FeatureSpec
    from recsys_mtl.config.loader import ConfigError
    from recsys_mtl.data.folder import spec_file
    from recsys_mtl.train.commands import quiet_library_logs
    from recsys_mtl.train.distributed import init_distributed
    from recsys_mtl.train.trainer import build_parquet_source

    resolve_arguments(args)
    if args.preset and PRESETS[args.preset].get("needs_gpu"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"bench train: --preset {args.preset} needs a GPU (26 tables of 1M x 128 are 13.3 GB "
                             "of fp32 weights); no CUDA device is visible here")
    if args.warmup < 1 or args.steps < 1 or args.steps % args.warmup:
        raise ConfigError(f"bench train: --steps ({args.steps}) must be a positive multiple of --warmup "
                          f"({args.warmup}): timing reads the log flushes, every --warmup steps")
    total = args.warmup + args.steps
    if args.data is None and args.rows // args.batch_size < total:
        raise ConfigError(f"bench train: --rows {args.rows:,} makes {args.rows // args.batch_size} batches of "
                          f"--batch-size {args.batch_size}; --warmup + --steps need {total}: give --rows "
                          f"{total * args.batch_size:,} or more")
    quiet_library_logs()
    import logging

    logging.getLogger("recsys_mtl.train").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        tmp = Path(tmp)
        data = bench_data(args.data, tmp, rows=args.rows, tasks=args.tasks, table_scale=args.table_scale)
        spec_path = spec_file(data)
        if args.preset:
            p = PRESETS[args.preset]
            spec_path = one_table_per_feature(spec_path, tmp / "spec.yaml", p["table_rows"], p["table_dim"])
        config = _config(args, data, spec_path, tmp / "run", total)
        spec = FeatureSpec.load(config.data.spec)
        env = init_distributed(config.train.device)
        stream = build_parquet_source(str(data), spec, args.batch_size, env, seed=0, shuffle=config.data.shuffle,
                                      shuffle_buffer_rows=config.data.shuffle_buffer_rows,
                                      num_workers=config.data.num_workers, drop_remainder=True)
        if len(stream) < total:
            raise ConfigError(f"bench train: {data} gives {len(stream)} batches of --batch-size {args.batch_size}; "
                              f"--warmup + --steps need {total}")
        batches = [b for _, b in zip(range(total), stream)]
        dims = sum(t.num_embeddings * t.embedding_dim for t in spec.tables.values())
        print(f"model: {config.model.architecture}, {spec.num_tasks} tasks, {len(spec.tables)} tables "
              f"({dims * 4 / 1e9:.2f} GB fp32), weighting {config.weighting.method}, "
              f"batch {args.batch_size}, {args.steps} timed steps after {args.warmup} warm-up, "
              f"device {env.device}, {env.world_size} process(es)", flush=True)
        variants = [(p, w) for p in (args.precision or [config.train.precision])
                    for w in (args.weighting or [config.weighting.method])]
        results = {}
        for precision, weighting in variants:
            extra = [f"train.precision={precision}", f"weighting.method={weighting}"]
            if weighting != config.weighting.method:
                extra.append("weighting.args={}")  # another method's arguments do not apply
            variant = _config(args, data, spec_path, tmp / "run", total, extra)
            if len(variants) > 1:
                print(f"precision {precision}, weighting {weighting}:", flush=True)
            results[precision, weighting] = _time_loops(variant, spec, env, batches, args)
        if len(variants) > 1:
            print(format_variants(results))
    return 0


def _time_loops(config, spec, env, batches, args: argparse.Namespace) -> dict:
    """Both loops, `args.repeat` runs each in ABBA order; prints each run and the medians."""
    plain, framework, losses = [], [], {"plain": [], "framework": []}
    loops = {
        "plain": (lambda: plain_loop(config, spec, env, batches, args.warmup, args.steps), plain,
                  "plain TorchRec loop "),
        "framework": (lambda: framework_loop(config, spec, env, args.warmup, args.steps), framework,
                      "framework (Trainer)"),
    }
    for r in range(args.repeat):
        # ABBA order (plain first on even runs, framework first on odd ones) cancels a steady drift
        for name in ("plain", "framework") if r % 2 == 0 else ("framework", "plain"):
            loop, out, label = loops[name]
            speed, loss = loop()
            out.append(speed)
            losses[name].append(loss)
            print(f"  run {r + 1}: {label} {out[-1]:>10,.0f} samples/s", flush=True)
            _release()
    pairs = [f / p for p, f in zip(plain, framework)]
    print(f"plain TorchRec loop: median {statistics.median(plain):,.0f}, best {max(plain):,.0f} samples/s "
          f"over {args.repeat} runs")
    print(f"framework step:      median {statistics.median(framework):,.0f}, best {max(framework):,.0f} samples/s "
          f"over {args.repeat} runs")
    # each run's pair is measured back to back, so its ratio sees the same background load
    print(f"ratio framework/plain per run: {' '.join(f'{x:.3f}' for x in pairs)}")
    print(f"ratio framework/plain: {statistics.median(pairs):.3f} median of runs, "
          f"{max(framework) / max(plain):.3f} best-of (target >= 0.90)", flush=True)
    return {"plain": statistics.median(plain), "framework": statistics.median(framework),
            "ratio": statistics.median(pairs), "loss": losses["framework"][-1], "plain_loss": losses["plain"][-1]}


def format_variants(results: dict) -> str:
    """One line per (precision, weighting): median throughputs, framework/plain, final-step losses against the
    first combination's; then GO4Align's framework throughput against equal weighting's at each precision."""
    (first_key, first), lines = next(iter(results.items())), []
    lines.append(f"{'precision':>9} {'weighting':>10} {'plain/s':>11} {'framework/s':>11} {'fw/plain':>8} "
                 f"{'final loss':>10} {'vs ' + '/'.join(first_key):>14}")
    for (precision, weighting), r in results.items():
        delta = (r["loss"] - first["loss"]) / abs(first["loss"]) if first["loss"] else float("nan")
        lines.append(f"{precision:>9} {weighting:>10} {r['plain']:>11,.0f} {r['framework']:>11,.0f} {r['ratio']:>8.3f} "
                     f"{r['loss']:>10.5f} {100 * delta:>+13.3f}%")
    for (precision, weighting), r in results.items():
        equal = results.get((precision, "equal"))
        if weighting != "equal" and equal:
            ratio = r["framework"] / equal["framework"]
            lines.append(f"{weighting} / equal framework throughput at {precision}: {ratio:.3f} (target >= 0.99): "
                         f"{'met' if ratio >= 0.99 else 'NOT met'}")
    return "\n".join(lines)

