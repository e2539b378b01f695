"""`recsys-mtl predict`: batch scoring of Parquet data into Parquet predictions.

    recsys-mtl predict --model RUN_ID|models:/NAME@ALIAS|models:/NAME/V|CHECKPOINT --data DIR --out DIR
                       [--keep COL ...] [--nproc N] [--overwrite]

Writes one prediction column per task, `pred_<task>` (float32: the probability for a binary task, the
prediction on the label's original scale for a regression task, its label transform undone), after the
`--keep` columns (keys such as user and item ids), one row per input row. Label columns are not needed.
The data is read a row group at a time (memory independent of its size) and written as it is scored,
one Parquet row group per input row group, one file per process (`part-00000.parquet`, ...); with one
process the rows keep the input's order (files sorted by path). The output appears all at once: it is
written into a hidden folder beside `--out` and renamed into place when complete, so an interrupted run
leaves no partial output. A non-empty `--out` is refused unless `--overwrite`.

Batch scoring and the MLflow pyfunc model (recsys_mtl.evaluate.pyfunc) share `scoring.score_table`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from recsys_mtl.argtypes import at_least_one
from recsys_mtl.evaluate import SCORING_BATCH_SIZE


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="score Parquet data with a trained model into Parquet predictions",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="REF", help="a run id, models:/NAME@ALIAS, models:/NAME/VERSION, "
                   "or a model or checkpoint directory")
    p.add_argument("--data", required=True, metavar="DIR", help="Parquet data (files or a folder) with the feature columns")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (refused if not empty, "
                   "unless --overwrite)")
    p.add_argument("--keep", nargs="+", default=[], metavar="COL", help="input columns copied to the output "
                   "(row keys, e.g. user_id item_id)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out (once the new output is complete)")
    p.add_argument("--nproc", type=at_least_one("processes"), default=None,
                   help="score with N processes on this machine through torchrun (default: 1)")
    p.add_argument("--batch-size", type=at_least_one("rows"), default=SCORING_BATCH_SIZE,
                   help="rows per forward pass (default %(default)s: fastest on CPU, docs/performance.md)")
    p.add_argument("--tracking-uri", help="default: sqlite:///mlflow.db in the current directory")
    p.set_defaults(func=run)


# ---------------------------------------------------------------- the command


def run(args: argparse.Namespace) -> int:
    out = args.out.resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        raise FileExistsError(f"--out {args.out}: exists and is not empty; choose another folder or pass --overwrite")
    if not Path(args.data).exists():
        raise FileNotFoundError(f"--data {args.data}: no such file or folder")
    if args.nproc and args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        from recsys_mtl.train.commands import launch_command

        return launch_command(getattr(args, "command_argv", None) or sys.argv[1:], args.nproc, "prediction")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from recsys_mtl.train.commands import quiet_library_logs

    quiet_library_logs()
    rank, world_size = 0, 1
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        from recsys_mtl.train.distributed import die_with_launcher, init_distributed

        die_with_launcher()
        env = init_distributed("cpu")
        rank, world_size = env.rank, env.world_size
    try:
        with tempfile.TemporaryDirectory(prefix="recsys-mtl-predict-") as tmp:
            written = predict(args, out, Path(tmp), rank, world_size)
    finally:
        if world_size > 1:
            from recsys_mtl.train.distributed import shutdown_distributed

            shutdown_distributed()
    if rank == 0:
        print(f"wrote {written:,} predictions to {out}")
    return 0


def _partial_dir(out: Path) -> Path:
    """The hidden folder beside --out that the output is written into (the same for every process)."""
    return out.parent / f".{out.name}.partial"


def _barrier(world_size: int) -> None:
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def predict(args: argparse.Namespace, out: Path, tmp: Path, rank: int, world_size: int) -> int:
    """Score this rank's row groups into its part file; rank 0 renames the complete folder into place.
    Returns the rows written by every rank (rank 0) or by this rank."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from recsys_mtl.config.loader import ConfigError
    from recsys_mtl.data.stream import ParquetStream
    from recsys_mtl.evaluate.loading import ModelRefs, is_path_ref
    from recsys_mtl.evaluate.scoring import features_only, prediction_columns, score_table

    loaded, _ = ModelRefs(args.tracking_uri, tmp).load(args.model, None, is_path=is_path_ref(args.model), overrides=[],
                                                       flags=("--config", "--set"))
    spec = loaded.spec
    stream = ParquetStream(str(args.data), features_only(spec), args.batch_size, rank=rank, world_size=world_size,
                           shuffle=False, drop_remainder=False)  # checks every file's feature columns, names the bad one
    names = stream.dataset.schema.names
    missing = [c for c in args.keep if c not in names]
    if missing:
        raise ConfigError(f"--keep {missing[0]}: no such column in {args.data}; its columns: {', '.join(names)}")
    clash = [c for c in args.keep if c in prediction_columns(spec)]
    if clash:
        raise ConfigError(f"--keep {clash[0]}: the name of a prediction column; keep other columns")
    partial = _partial_dir(out)
    if rank == 0:
        shutil.rmtree(partial, ignore_errors=True)  # a run that died before its rename
        partial.mkdir(parents=True)
        print(f"scoring {args.data} with {loaded.source} (checkpoint {loaded.checkpoint.name}, {spec.num_tasks} tasks, "
              f"{stream.num_rows:,} rows, {world_size} process{'es' * (world_size > 1)})", flush=True)
    _barrier(world_size)
    units = stream.row_groups_of_rank()
    pred_names = prediction_columns(spec)
    rows = 0
    t0 = time.perf_counter()
    part = partial / f"part-{rank:05d}.parquet"
    bar = tqdm(total=sum(u.num_rows for u in units), desc="predict" + (" (rank 0's share)" if world_size > 1 else ""),
               unit="row", unit_scale=True, disable=True if rank else None, mininterval=1.0)
    writer = None
    try:
        for unit in units:
            table = stream.read_row_group(unit, columns=list(dict.fromkeys(features_only(spec).columns() + args.keep)))
            where = f"{unit.path} (row group {unit.index})"
            scores = score_table(loaded.model, spec, table, where, args.batch_size)
            result = pa.table([table.column(c) for c in args.keep] + [pa.array(scores[:, t]) for t in range(len(pred_names))],
                              names=list(args.keep) + pred_names)
            if writer is None:
                writer = pq.ParquetWriter(part, result.schema)
            writer.write_table(result)
            rows += result.num_rows
            bar.update(result.num_rows)
        if writer is None:  # a rank with no row group writes an empty file: the output's schema stays readable
            schema = pa.schema([stream.dataset.schema.field(c) for c in args.keep] +
                               [pa.field(n, pa.float32()) for n in pred_names])
            pq.write_table(schema.empty_table(), part)
    finally:
        if writer is not None:
            writer.close()
        bar.close()
    total = rows
    if world_size > 1:
        import torch
        import torch.distributed as dist

        counts = torch.tensor([rows], dtype=torch.int64)
        dist.all_reduce(counts)
        total = int(counts)
    _barrier(world_size)  # every part written
    if rank == 0:
        _replace(partial, out)
        rate = total / max(time.perf_counter() - t0, 1e-9)
        print(f"{total:,} rows scored ({rate:,.0f} rows/s{' across processes' if world_size > 1 else ''})")
    _barrier(world_size)
    return total


def _replace(partial: Path, out: Path) -> None:
    """Move the complete output into place; an existing --out (allowed by --overwrite) goes only after."""
    if out.exists():
        old = out.parent / f".{out.name}.replaced"
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        partial.rename(out)
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
    else:
        partial.rename(out)


__all__ = ["predict", "register", "run"]
