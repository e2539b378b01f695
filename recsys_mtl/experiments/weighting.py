"""Task-weighting experiment: every (method, seed) trained with one config, compared on exact test NE.

    recsys-mtl experiment weighting --dataset kuairand --out results/weighting/kuairand
    recsys-mtl experiment weighting --dataset synthetic64 --seeds 0 1 2 --methods equal go4align --out DIR

The experiment config (`configs/experiments/weighting_<dataset>.yaml`, loaded by the one
config loader) names the dataset, a training config plus `--set`-style overrides, the seeds
and the methods with their arguments. Every run uses that same training config except the
`weighting` section and `train.seed`. Steps:

1. prepare the data if `dataset.dir` is missing (KuaiRand conversion, or synthetic data
   generated over `days` date partitions whose last `test_days` become the test split);
2. train each (method, seed) in its own process (`--jobs` at a time, `--threads` torch
   threads each), then score the whole test split: `DIR/runs/<method>/seed<k>/` holds the
   resolved config, train_log.jsonl, predictions.pt and run.json. A finished run is not
   repeated (delete its folder, or pass --rerun);
3. exact per-task test NE/AUC (recsys_mtl.metrics.offline), and against the baseline
   (equal weights): the per-seed mean over tasks of NE_method / NE_equal - 1, its mean and
   std over seeds, and a paired bootstrap CI over test rows on the pooled predictions (the
   seeds' prediction columns side by side, so a replicate resamples the same rows for every
   seed and both methods);
4. `DIR/results.json` and `DIR/results.md`.

A method argument may name a value derived from the training data instead of a literal:
`inverse_base_rate_entropy` (a list: 1 / H(p_t) of each task's training base rate, scaled
to mean 1, so that sum_t w_t L_t is the sum of the tasks' training NEs at a calibrated
model) is the one defined.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import dataclasses
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from recsys_mtl.data.folder import README_FILE, SPEC_FILE, SYNTHETIC_FILE, metadata_file, spec_file

log = logging.getLogger(__name__)

#: experiment configs shipped for `--dataset NAME`
_EXPERIMENT_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "experiments"
DATASET_CONFIGS = {
    "kuairand": str(_EXPERIMENT_CONFIGS / "weighting_kuairand.yaml"),
    "kuairand_play_time": str(_EXPERIMENT_CONFIGS / "weighting_kuairand_play_time.yaml"),
    "synthetic64": str(_EXPERIMENT_CONFIGS / "weighting_synthetic64.yaml"),
    "synthetic_mixed": str(_EXPERIMENT_CONFIGS / "weighting_synthetic_mixed.yaml"),
}
#: the experiment config's path settings, relative to the config file
PATH_KEYS = (("train_config",), ("dataset", "dir"), ("dataset", "src"))
RUN_DONE = "run.json"
PREDICTIONS = "predictions.pt"


# ------------------------------------------------------------------------------ config


@dataclasses.dataclass(frozen=True)
class ExperimentDataset:
    """Where the prepared data lives (`dir/train`, `dir/test`, `dir/_feature_spec.yaml`) and how to make it."""

    kind: str  # a registered dataset kind (EXPERIMENT_DATASETS): synthetic | kuairand
    dir: str
    src: str | None = None  # kuairand: the source folder
    # kuairand: train is `date <= split_date`, test `split_date < date <= end_date`; a validation split carved
    # from the train days only is split_date 20220415, end_date 20220418 (the test days stay unseen)
    split_date: int | None = None
    end_date: int | None = None
    # synthetic: `rows` over `days` date partitions; the last `test_days` are the test split
    tasks: int = 64
    rows: int = 400_000
    days: int = 4
    test_days: int = 1
    table_scale: float = 0.02
    seed: int = 0
    regression_tasks: int = 0  # synthetic: watch-time-like regression targets beside the binary tasks
    spec: str = SPEC_FILE  # the spec in `dir` the runs train, e.g. kuairand's _feature_spec_play_time.yaml

    def validate(self, where) -> None:
        if self.kind not in EXPERIMENT_DATASETS:
            raise where.child("kind").error(f"unknown dataset kind {self.kind!r}; set it to one of: "
                                            f"{', '.join(sorted(EXPERIMENT_DATASETS))}")
        EXPERIMENT_DATASETS[self.kind].validate(self, where)


#: dataset kind -> how to make and recognise it (`@register_dataset`)
EXPERIMENT_DATASETS: dict[str, "ExperimentDatasetKind"] = {}


def register_dataset(name: str):
    def decorator(cls: type) -> type:
        EXPERIMENT_DATASETS[name] = cls()
        return cls

    return decorator


class ExperimentDatasetKind:
    """How one kind of experiment dataset is made: `prepare` writes `out/train`, `out/test` and the spec;
    `stamp` is what decides its content (a folder made with other settings is refused)."""

    def validate(self, ds: ExperimentDataset, where) -> None: ...

    def stamp(self, ds: ExperimentDataset) -> dict[str, Any]:
        raise NotImplementedError

    def stamp_of_unstamped(self, out: Path, ds: ExperimentDataset) -> dict[str, Any] | None:
        """The stamp of a folder prepared before stamps, from what it holds (None: cannot tell)."""
        return None

    def prepare(self, ds: ExperimentDataset, out: Path) -> None:
        raise NotImplementedError


@register_dataset("kuairand")
class KuaiRandDataset(ExperimentDatasetKind):
    def validate(self, ds: ExperimentDataset, where) -> None:
        if ds.regression_tasks:
            raise where.child("regression_tasks").error("applies to synthetic data; for KuaiRand's play_time_ms "
                                                        "set spec: _feature_spec_play_time.yaml")
        if not ds.src:
            raise where.child("src").error("kuairand needs the source folder (e.g. ../shared/data/kuairand)")

    def stamp(self, ds: ExperimentDataset) -> dict[str, Any]:
        from recsys_mtl.data.kuairand import SPLIT_DATE  # the converter's default split, which prepare makes

        return {"kind": ds.kind, "split_date": ds.split_date or SPLIT_DATE, "end_date": ds.end_date}

    def stamp_of_unstamped(self, out: Path, ds: ExperimentDataset) -> dict[str, Any] | None:
        readme = metadata_file(out, README_FILE)
        if not readme.exists():  # `recsys-mtl data kuairand` writes its split there
            return None
        import re

        m = re.search(r"Train: date <= (\d+) \(\d+ rows\); test: (later|to (\d+))", readme.read_text())
        if not m:
            return None
        return {"kind": "kuairand", "split_date": int(m.group(1)), "end_date": int(m.group(3)) if m.group(3) else None}

    def prepare(self, ds: ExperimentDataset, out: Path) -> None:
        from recsys_mtl.data.kuairand import SPLIT_DATE, convert_kuairand

        log.info("converting KuaiRand from %s to %s", ds.src, out)
        convert_kuairand(ds.src, out, overwrite=True, split_date=ds.split_date or SPLIT_DATE, end_date=ds.end_date)
        (out / DATASET_STAMP).write_text(json.dumps(dataset_stamp(ds)))


@register_dataset("synthetic")
class SyntheticDataset(ExperimentDatasetKind):
    def validate(self, ds: ExperimentDataset, where) -> None:
        if not 1 <= ds.test_days < ds.days:
            raise where.child("test_days").error(f"must be in [1, days - 1] = [1, {ds.days - 1}], got {ds.test_days}")

    def stamp(self, ds: ExperimentDataset) -> dict[str, Any]:
        stamp = {k: v for k, v in dataclasses.asdict(ds).items() if k not in ("dir", "src", "spec")}
        if not stamp["regression_tasks"]:  # datasets stamped before regression tasks existed match
            del stamp["regression_tasks"]
        return stamp

    def stamp_of_unstamped(self, out: Path, ds: ExperimentDataset) -> dict[str, Any] | None:
        synth = metadata_file(out, SYNTHETIC_FILE)
        if not synth.exists():
            return None
        made = json.loads(synth.read_text())
        test_days = len(list((out / "test").glob("date=*")))
        return {"kind": "synthetic", "test_days": test_days,
                **{k: made.get(k) for k in ("tasks", "rows", "days", "table_scale", "seed")}}

    def prepare(self, ds: ExperimentDataset, out: Path) -> None:
        from recsys_mtl.data.synthetic import SynthConfig, generate_synthetic
        from recsys_mtl.io import replace_dir

        log.info("generating %d synthetic rows, %d tasks, %d days (last %d for test) into %s",
                 ds.rows, ds.tasks, ds.days, ds.test_days, out)
        raw = out.with_name(f".{out.name}.raw")
        shutil.rmtree(raw, ignore_errors=True)
        generate_synthetic(raw, SynthConfig(tasks=ds.tasks, rows=ds.rows, days=ds.days, seed=ds.seed,
                                            table_scale=ds.table_scale, regression_tasks=ds.regression_tasks))
        dates = sorted(p.name for p in raw.glob("date=*"))
        for split, names in (("train", dates[: len(dates) - ds.test_days]),
                             ("test", dates[len(dates) - ds.test_days:])):
            (raw / split).mkdir()
            for name in names:
                os.replace(raw / name, raw / split / name)
        (raw / DATASET_STAMP).write_text(json.dumps(dataset_stamp(ds)))
        replace_dir(raw, out)


@dataclasses.dataclass(frozen=True)
class ExperimentEvaluation:
    n_boot: int = 200  # paired bootstrap replicates (pooled over seeds)
    bootstrap_seed: int = 0
    gauc_group: str | None = None  # a test-split column of group ids (e.g. user_id): adds per-task GAUC tables

    def validate(self, where) -> None:
        if self.n_boot < 10:
            raise where.child("n_boot").error(f"must be >= 10, got {self.n_boot}")


@dataclasses.dataclass(frozen=True)
class WeightingExperimentConfig:
    dataset: ExperimentDataset
    train_config: str  # a training config (configs/*.yaml); data paths, seed, output and weighting are set per run
    methods: dict[str, dict[str, Any]]  # method name -> constructor arguments
    set: list[str] = dataclasses.field(default_factory=list)  # overrides of train_config, as `recsys-mtl train --set`
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    baseline: str = "equal"
    evaluation: ExperimentEvaluation = dataclasses.field(default_factory=ExperimentEvaluation)
    description: str = ""

    def validate(self, where) -> None:
        from recsys_mtl.weighting import weighting_methods

        known = weighting_methods()
        for name in self.methods:
            if method_name(name) not in known:
                raise where.child("methods").child(name).error(
                    f"unknown weighting method; known: {', '.join(sorted(known))}")
        if self.baseline not in self.methods:
            raise where.child("baseline").error(f"{self.baseline!r} is not one of the methods ({', '.join(self.methods)})")
        if not self.seeds:
            raise where.child("seeds").error("needs at least one seed")

    @classmethod
    def load(cls, path: str | Path) -> "WeightingExperimentConfig":
        """The experiment of the config file `path`; train_config, dataset.dir and dataset.src are relative to the
        file (a missing train_config is one error naming the key)."""
        from recsys_mtl.config.loader import ConfigError, load_yaml

        cfg = load_yaml(path, cls, PATH_KEYS)
        if not Path(cfg.train_config).is_file():
            raise ConfigError(f"{path}: train_config: {cfg.train_config}: no such file")
        return cfg


# ------------------------------------------------------------------------------ data


DATASET_STAMP = "_dataset.json"  # in a prepared dataset: the settings it was made with (a name Parquet readers skip)


def dataset_stamp(ds: ExperimentDataset) -> dict[str, Any]:
    """The settings that decide a prepared dataset's content (not where it or its source lives)."""
    return EXPERIMENT_DATASETS[ds.kind].stamp(ds)


def _stamp_of_unstamped(out: Path, ds: ExperimentDataset) -> dict[str, Any] | None:
    """The stamp of a dataset prepared before stamps, from what it holds (None: cannot tell)."""
    return EXPERIMENT_DATASETS[ds.kind].stamp_of_unstamped(out, ds)


def prepare_data(ds: ExperimentDataset) -> Path:
    """`ds.dir` with train/, test/ and _feature_spec.yaml; made (atomically) if it is not there, and refused if it
    was made with other settings."""
    from recsys_mtl.config.loader import ConfigError

    out = Path(ds.dir)
    if spec_file(out).exists() and (out / "train").is_dir() and (out / "test").is_dir():
        stamp = metadata_file(out, DATASET_STAMP)
        made = json.loads(stamp.read_text()) if stamp.exists() else _stamp_of_unstamped(out, ds)
        if made is not None and ({k: made.get(k) for k in dataset_stamp(ds)} != dataset_stamp(ds)
                                 or made.get("regression_tasks", 0) != ds.regression_tasks):
            raise ConfigError(f"dataset.dir {out} was prepared with {made}, and the config now says "
                              f"{dataset_stamp(ds)}: remove that folder (it is made again) or point dataset.dir "
                              "elsewhere")
        if made is None:
            log.warning("%s was prepared before datasets recorded their settings: assuming it matches %s", out,
                        dataset_stamp(ds))
        if not stamp.exists():
            stamp.write_text(json.dumps(dataset_stamp(ds)))
        return out
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out}: exists but is not a prepared dataset (no train/, test/, {SPEC_FILE}); "
                          "remove it or point dataset.dir elsewhere")
    out.parent.mkdir(parents=True, exist_ok=True)
    EXPERIMENT_DATASETS[ds.kind].prepare(ds, out)
    return out


def train_base_rates(data_dir: Path, spec_name: str = SPEC_FILE) -> dict[str, float]:
    """Each task's label rate over the labelled training rows (label columns only)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from recsys_mtl.config.features import FeatureSpec

    spec = FeatureSpec.load(metadata_file(data_dir, spec_name))
    table = pads.dataset(data_dir / "train", format="parquet", partitioning="hive").to_table(
        columns=[t.source for t in spec.head_tasks])
    rates = {}
    for t in spec.head_tasks:
        col = table.column(t.source).cast("float64")
        rates[t.name] = float(pc.mean(col).as_py() or 0.0)
    if spec.has_cascades:  # a child's rate over its parent-positive rows, a product's over every parent label
        import numpy as np

        from recsys_mtl.data.arrow import binary_labels, cascade_label_plan, cascade_labels_

        labels = np.full((table.num_rows, spec.num_tasks), -1, dtype=np.int8)
        for j, t in enumerate(spec.head_tasks):
            if not t.is_regression:
                labels[:, j] = binary_labels(table.column(t.source).combine_chunks(), t, str(data_dir / "train"))
        cascade_labels_(labels, cascade_label_plan(spec))
        for j, t in enumerate(spec.tasks):
            if not t.is_regression:
                labelled = labels[:, j] >= 0
                rates[t.name] = float(labels[labelled, j].mean()) if labelled.any() else 0.0
    return rates


def inverse_base_rate_entropy(data_dir: Path, seed: int, spec_name: str = SPEC_FILE) -> list[float]:
    """1 / H(base rate) per binary task, normalised to mean 1; a regression task (no base rate) gets the binary
    tasks' mean."""
    from recsys_mtl.config.features import FeatureSpec

    rates = train_base_rates(data_dir, spec_name)
    regression = {t.name for t in FeatureSpec.load(metadata_file(data_dir, spec_name)).tasks if t.is_regression}
    inv = []
    for task, p in rates.items():
        if task in regression:
            inv.append(None)
            continue
        p = min(max(p, 1e-6), 1 - 1e-6)
        inv.append(1.0 / -(p * math.log(p) + (1 - p) * math.log(1 - p)))
    binary = [v for v in inv if v is not None]
    mean = sum(binary) / len(binary) if binary else 1.0
    return [1.0 if v is None else round(v / mean, 6) for v in inv]


#: method arguments that name a value computed from the training data or the run
DERIVED_ARGUMENTS = {
    "inverse_base_rate_entropy": inverse_base_rate_entropy,
    "train_seed": lambda data_dir, seed, spec_name=SPEC_FILE: seed,  # e.g. random weighting draws a different sequence per seed
}


def method_name(key: str) -> str:
    """A methods entry is `NAME` or `NAME@LABEL` (the same method with other arguments, e.g. go4align@k8)."""
    return key.split("@", 1)[0]


def resolve_method_args(args: dict[str, Any], data_dir: Path, seed: int,
                        spec_name: str = SPEC_FILE) -> dict[str, Any]:
    return {k: DERIVED_ARGUMENTS[v](data_dir, seed, spec_name) if isinstance(v, str) and v in DERIVED_ARGUMENTS else v
            for k, v in args.items()}


# ------------------------------------------------------------------------------ runs


def run_train_config(cfg: WeightingExperimentConfig, data_dir: Path, method: str, args: dict[str, Any], seed: int,
                     run_dir: Path) -> dict[str, Any]:
    """The training config of one run as plain data: the shared config with this run's seed and weighting."""
    from recsys_mtl.config.loader import read_yaml
    from recsys_mtl.config.train import apply_overrides

    data = read_yaml(cfg.train_config) or {}
    apply_overrides(data, list(cfg.set), source=cfg.train_config)
    data.setdefault("data", {}).update(train_path=str(data_dir / "train"), eval_path=None,
                                       spec=str(metadata_file(data_dir, cfg.dataset.spec)))
    data["weighting"] = {"method": method_name(method), "args": args}
    train = data.setdefault("train", {})
    train.update(seed=seed, output_dir=str(run_dir), progress_bar=False, eval_every=0)
    train["checkpoint"] = {"every": 0, "keep": 1, "resume": False, "dir": str(run_dir / "checkpoints")}
    data["tracking"] = {}
    return data


def _shown(path: str | None) -> str | None:
    """A path as recorded in results: relative to the working directory where it lies below it."""
    if path is None or "://" in path:
        return path
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _same_training(saved: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether two runs' training configs mean the same, once parsed: `lr: 2e-3` read as text by one version
    and as a number by another is the same setting."""
    from recsys_mtl.config.loader import ConfigError, as_number, from_dict, to_dict
    from recsys_mtl.config.train import TrainConfig, resolve_paths

    def numbers(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: numbers(v) for k, v in x.items()}
        return [numbers(v) for v in x] if isinstance(x, list) else as_number(x)

    def parsed(d: dict[str, Any]) -> dict[str, Any]:
        d = copy.deepcopy(d)
        resolve_paths(d, Path.cwd())  # runs written when experiment paths were relative to the working directory
        out = to_dict(from_dict(TrainConfig, d, "run"))
        out["weighting"]["args"] = numbers(out["weighting"]["args"])
        return out

    try:
        return parsed(saved) == parsed(wanted)
    except ConfigError:  # a config this version no longer reads: not the same run
        return False


def train_and_predict(run_dir: Path, threads: int | None = None) -> dict[str, Any]:
    """Train from `run_dir/train_config.yaml`, score the test split, write predictions.pt and run.json."""
    import torch

    from recsys_mtl.config.loader import from_dict, read_yaml
    from recsys_mtl.config.train import TrainConfig
    from recsys_mtl.train.commands import quiet_library_logs
    from recsys_mtl.train.evaluation import predict
    from recsys_mtl.train.trainer import Trainer, build_parquet_source

    if threads:
        torch.set_num_threads(threads)
    quiet_library_logs()
    logging.getLogger("recsys_mtl.train").setLevel(logging.WARNING)
    meta = json.loads((run_dir / "run_meta.json").read_text())
    config = from_dict(TrainConfig, read_yaml(run_dir / "train_config.yaml"), str(run_dir / "train_config.yaml"))
    t0 = time.perf_counter()
    trainer = Trainer(config)
    result = trainer.fit()
    train_s = time.perf_counter() - t0
    batch = config.data.eval_batch_size or config.data.batch_size
    test = build_parquet_source(meta["test_path"], trainer.spec, batch, trainer.env, seed=0, shuffle=False,
                                shuffle_buffer_rows=0, num_workers=0, drop_remainder=False)
    test.set_epoch(0)
    trainer.pipeline.detach()
    trainer.dmp.eval()
    logits, labels, mask = predict(trainer.module.model, test, trainer.spec, batch, trainer.device, trainer.env.world_size)
    n = int(meta["test_rows"])  # predict pads the last batch with unlabelled rows
    spec = trainer.spec  # int8 labels for binary-only specs (a quarter of the file); regression labels need floats
    torch.save({"logits": logits[:n].float(), "labels": labels[:n].to(torch.float32 if spec.has_regression else torch.int8),
                "mask": mask[:n], "tasks": spec.task_names, "task_types": spec.task_types,
                "label_transforms": [t.transform for t in spec.tasks]}, run_dir / PREDICTIONS)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # predictions are what the experiment keeps
    weights = _mean_weights(run_dir / "train_log.jsonl")
    done = {
        "method": meta["method"], "seed": meta["seed"], "args": meta["args"], "steps": result.steps,
        "epochs": result.epochs_completed, "train_seconds": round(train_s, 2),
        "samples_per_second": round(result.samples_per_second, 1), "last_loss": result.last_loss,
        "finite_predictions": bool(torch.isfinite(logits).all()), "mean_weights": weights,
        "threads": torch.get_num_threads(), "git_commit": meta.get("git_commit"), "git_dirty": meta.get("git_dirty"),
    }
    (run_dir / RUN_DONE).write_text(json.dumps(done, indent=1))
    return done


def _mean_weights(path: Path) -> dict[str, list[float]]:
    """Mean task weights over the first and the last tenth of training, and each task's largest weight."""
    if not path.exists():
        return {}
    rows = [json.loads(line)["weights"] for line in path.read_text().splitlines() if line]
    if not rows:
        return {}
    n = max(1, len(rows) // 10)

    def mean(part):
        return [round(sum(col) / len(col), 6) for col in zip(*part)]

    return {"first_tenth": mean(rows[:n]), "last_tenth": mean(rows[-n:]),
            "max": [float(f"{max(col):.6g}") for col in zip(*rows)]}


def _launch(run_dir: Path, threads: int) -> int:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               MLFLOW_DISABLE_TELEMETRY="true")
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    with open(run_dir / "log.txt", "w") as logf:
        return subprocess.call([sys.executable, "-m", "recsys_mtl.experiments.weighting", "--one-run", str(run_dir),
                                "--threads", str(threads)], stdout=logf, stderr=subprocess.STDOUT, env=env)


def run_grid(cfg: WeightingExperimentConfig, out: Path, methods: list[str], seeds: list[int], *, jobs: int = 1,
             threads: int = 1, rerun: bool = False) -> dict[tuple[str, int], dict[str, Any]]:
    """Train every (method, seed) that has no finished run in `out/runs`; return every run's run.json."""
    import yaml

    data_dir = prepare_data(cfg.dataset)
    stamp = dataset_stamp(cfg.dataset)
    test_rows = _count_rows(data_dir / "test")
    from recsys_mtl.config.loader import from_dict
    from recsys_mtl.config.train import TrainConfig
    from recsys_mtl.tracking.provenance import git_commit

    commit = git_commit()
    todo, done = [], {}
    for seed in seeds:  # seed-major: an interrupted grid has whole seeds to compare
        for method in methods:
            run_dir = out / "runs" / method / f"seed{seed}"
            args = resolve_method_args(cfg.methods[method], data_dir, seed, cfg.dataset.spec)
            train_cfg = run_train_config(cfg, data_dir, method, args, seed, run_dir)
            from_dict(TrainConfig, train_cfg, f"{method} seed {seed}")  # fail before launching anything
            finished = (run_dir / RUN_DONE).exists() and (run_dir / PREDICTIONS).exists()
            if finished and not rerun:
                same_data = json.loads((run_dir / "run_meta.json").read_text()).get("dataset", stamp) == stamp
                if _same_training(yaml.safe_load((run_dir / "train_config.yaml").read_text()), train_cfg) and same_data:
                    done[(method, seed)] = json.loads((run_dir / RUN_DONE).read_text())
                    continue
                log.info("%s seed %d: the training config or the dataset changed since it ran; training it again",
                         method, seed)
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir(parents=True)
            (run_dir / "train_config.yaml").write_text(yaml.safe_dump(train_cfg, sort_keys=False))
            (run_dir / "run_meta.json").write_text(json.dumps(
                {"method": method, "seed": seed, "args": args, "dataset": stamp, "test_path": str(data_dir / "test"),
                 "test_rows": test_rows, "git_commit": commit[0] if commit else None,
                 "git_dirty": commit[1] if commit else None}))
            todo.append((method, seed, run_dir))
    log.info("%d run(s) to train, %d already done; %s", len(todo), len(done),
             f"{jobs} process(es) x {threads} thread(s)" if jobs else "in this process")
    t0 = time.perf_counter()

    def one(item):
        method, seed, run_dir = item
        s = time.perf_counter()
        if jobs == 0:
            train_and_predict(run_dir, threads)
            rc = 0
        else:
            rc = _launch(run_dir, threads)
        if rc != 0 or not (run_dir / RUN_DONE).exists():
            raise RuntimeError(f"run {method} seed {seed} failed (exit {rc}); see {run_dir / 'log.txt'}")
        log.info("done %s seed %d in %.0f s (%.0f s since start)", method, seed, time.perf_counter() - s,
                 time.perf_counter() - t0)
        return (method, seed), json.loads((run_dir / RUN_DONE).read_text())

    if jobs <= 1:
        for item in todo:
            k, v = one(item)
            done[k] = v
    else:
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            for k, v in pool.map(one, todo):
                done[k] = v
    return done


def _count_rows(path: Path) -> int:
    import pyarrow.dataset as pads

    return pads.dataset(path, format="parquet", partitioning="hive").count_rows()


# ------------------------------------------------------------------------------ results


def _nanmean_std(values) -> tuple[float, float]:
    import numpy as np

    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def summarize(cfg: WeightingExperimentConfig, out: Path, methods: list[str], seeds: list[int],
              runs: dict[tuple[str, int], dict[str, Any]]) -> dict[str, Any]:
    """Per-task test NE/AUC per run, relative NE change vs the baseline per seed, pooled bootstrap CI."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Mean of empty slice", category=RuntimeWarning)  # unlabelled tasks
        return _summarize(cfg, out, methods, seeds, runs)


def _summarize(cfg: WeightingExperimentConfig, out: Path, methods: list[str], seeds: list[int],
               runs: dict[tuple[str, int], dict[str, Any]]) -> dict[str, Any]:
    import numpy as np
    import torch

    from recsys_mtl.metrics.offline import compare_models, task_metrics

    preds: dict[tuple[str, int], dict] = {}
    for key in runs:
        preds[key] = torch.load(out / "runs" / key[0] / f"seed{key[1]}" / PREDICTIONS)
    first = preds[next(iter(preds))]
    tasks, labels, mask = first["tasks"], first["labels"], first["mask"]
    T = len(tasks)
    for key, p in preds.items():
        if not (torch.equal(p["labels"], labels) and torch.equal(p["mask"], mask)):
            raise RuntimeError(f"run {key}: test labels differ from the other runs' (same test split expected)")
    # predictions saved before task types existed are all binary
    kinds = {"task_types": first.get("task_types"), "label_transforms": first.get("label_transforms")}
    metrics = {key: task_metrics(p["logits"], labels, mask, from_logits=True, **kinds) for key, p in preds.items()}
    gauc = _grouped_aucs(cfg, out, preds, labels, mask, kinds["task_types"])
    error = {key: m.normalized_error for key, m in metrics.items()}  # NE, or NMSE for regression tasks
    base = cfg.baseline
    import yaml

    from recsys_mtl.tracking.provenance import package_versions

    base_key = (base, seeds[0]) if (base, seeds[0]) in runs else next(iter(runs))
    resolved = yaml.safe_load((out / "runs" / base_key[0] / f"seed{base_key[1]}" / "train_config.yaml").read_text())
    result: dict[str, Any] = {
        "dataset": {k: _shown(v) if k in ("dir", "src") else v for k, v in dataclasses.asdict(cfg.dataset).items()},
        "train_config": _shown(cfg.train_config), "set": list(cfg.set),
        "resolved_train_config": resolved, "packages": package_versions(),
        "git_commits": sorted({(r.get("git_commit") or "not recorded") + (" (dirty)" if r.get("git_dirty") else "")
                               for r in runs.values()}),
        "baseline": base, "seeds": seeds, "tasks": tasks, "task_types": kinds["task_types"] or ["binary"] * T,
        "test_rows": int(labels.shape[0]),
        "labelled_test_rows": mask.sum(0).tolist(),
        "test_base_rate": [float(x) for x in metrics[next(iter(metrics))].base_rate], "methods": {},
    }
    if gauc:
        result["gauc_group"] = cfg.evaluation.gauc_group
    for method in methods:
        seeds_done = [s for s in seeds if (method, s) in runs]
        m: dict[str, Any] = {"args": cfg.methods[method], "seeds_done": seeds_done, "per_seed": {},
                             "resolved_args": runs[(method, seeds_done[0])]["args"] if seeds_done else {}}
        ne = np.stack([error[(method, s)] for s in seeds_done]) if seeds_done else np.full((1, T), np.nan)
        auc = np.stack([metrics[(method, s)].auc for s in seeds_done]) if seeds_done else np.full((1, T), np.nan)
        m["ne_mean"] = np.nanmean(ne, 0).tolist()
        m["ne_std"] = (ne.std(0, ddof=1) if len(seeds_done) > 1 else np.zeros(T)).tolist()
        m["auc_mean"] = np.nanmean(auc, 0).tolist()
        m["auc_std"] = (auc.std(0, ddof=1) if len(seeds_done) > 1 else np.zeros(T)).tolist()
        if gauc:
            g = np.stack([gauc[(method, s)] for s in seeds_done]) if seeds_done else np.full((1, T), np.nan)
            m["gauc_mean"] = np.nanmean(g, 0).tolist()
            m["gauc_std"] = (g.std(0, ddof=1) if len(seeds_done) > 1 else np.zeros(T)).tolist()
        rels = []
        for s in seeds_done:
            r = runs[(method, s)]
            seed_row = {"args": r["args"], "ne": error[(method, s)].tolist(), "auc": metrics[(method, s)].auc.tolist(),
                        "mean_ne": float(np.nanmean(error[(method, s)])),
                        "mean_auc": float(np.nanmean(metrics[(method, s)].auc)),
                        "train_seconds": r["train_seconds"], "steps": r["steps"], "last_loss": r["last_loss"],
                        "finite_predictions": r["finite_predictions"], "mean_weights": r.get("mean_weights", {})}
            if gauc:
                seed_row["gauc"] = gauc[(method, s)].tolist()
            if (base, s) in metrics:
                rel = error[(method, s)] / error[(base, s)] - 1
                seed_row["rel_ne_change"] = rel.tolist()
                seed_row["mean_rel_ne_change"] = float(np.nanmean(rel))
                seed_row["tasks_better"] = int(np.sum(rel < 0))
                rels.append(seed_row["mean_rel_ne_change"])
            m["per_seed"][str(s)] = seed_row
        m["mean_rel_ne_change"], m["mean_rel_ne_change_std"] = _nanmean_std(rels)
        per_task_rel = [m["per_seed"][str(s)]["rel_ne_change"] for s in seeds_done if "rel_ne_change" in m["per_seed"][str(s)]]
        m["rel_ne_change_mean"] = np.nanmean(np.array(per_task_rel), 0).tolist() if per_task_rel else [float("nan")] * T
        m["mean_ne"], m["mean_ne_std"] = _nanmean_std([m["per_seed"][str(s)]["mean_ne"] for s in seeds_done])
        m["mean_auc"], m["mean_auc_std"] = _nanmean_std([m["per_seed"][str(s)]["mean_auc"] for s in seeds_done])
        largest = [max(m["per_seed"][str(s)]["mean_weights"].get("max", [float("nan")])) for s in seeds_done]
        m["largest_weight"] = max(largest) if largest else float("nan")  # any task, any step, any seed
        m["train_seconds_mean"] = _nanmean_std([m["per_seed"][str(s)]["train_seconds"] for s in seeds_done])[0]
        paired = [s for s in seeds_done if (base, s) in preds]
        if method != base and paired:
            # seeds side by side as columns: one replicate resamples the same test rows for every seed
            a = torch.cat([preds[(base, s)]["logits"] for s in paired], dim=1)
            b = torch.cat([preds[(method, s)]["logits"] for s in paired], dim=1)
            pooled = {k: None if v is None else list(v) * len(paired) for k, v in kinds.items()}
            c = compare_models(a, b, labels.repeat(1, len(paired)), mask.repeat(1, len(paired)), from_logits=True,
                               n_boot=cfg.evaluation.n_boot, seed=cfg.evaluation.bootstrap_seed, **pooled)
            m["pooled_bootstrap"] = {"seeds": paired, "mean_rel_ne_change": c.mean_rel_ne_change,
                                     "ci95": list(c.mean_rel_ne_change_ci), "n_boot": c.n_boot,
                                     "n_buckets": c.n_buckets}
        result["methods"][method] = m
    return result


def _grouped_aucs(cfg: WeightingExperimentConfig, out: Path, preds: dict, labels, mask,
                  task_types) -> dict[tuple[str, int], Any]:
    """Each run's per-task GAUC over the groups of `evaluation.gauc_group` in the test split ({} when not set)."""
    column = cfg.evaluation.gauc_group
    if not column:
        return {}
    from recsys_mtl.config.features import FeatureSpec
    from recsys_mtl.evaluate.scoring import eval_set_groups
    from recsys_mtl.metrics.grouped import grouped_auc

    run_dir = out / "runs" / next(iter(preds))[0] / f"seed{next(iter(preds))[1]}"
    import yaml

    spec_path = yaml.safe_load((run_dir / "train_config.yaml").read_text())["data"]["spec"]
    test_path = json.loads((run_dir / "run_meta.json").read_text())["test_path"]
    groups = eval_set_groups(test_path, column, FeatureSpec.load(spec_path), labels.float(), mask)
    return {key: grouped_auc(p["logits"], labels, mask, groups, task_types=task_types).gauc for key, p in preds.items()}


def _f(x: float, spec: str) -> str:
    return "nan" if x is None or not math.isfinite(x) else format(x, spec)


def _args_text(args: dict[str, Any], resolved: dict[str, Any]) -> str:
    """The configured arguments; a derived one also shows its value (long lists summarised)."""
    parts = []
    for k, v in args.items():
        text = f"{k}={v}"
        r = resolved.get(k)
        if isinstance(r, list):
            text += f" [{len(r)} values, {min(r):.3g}..{max(r):.3g}]" if len(r) > 4 else f" {r}"
        parts.append(text)
    return ", ".join(parts) or "defaults"


def _pm(mean: float, std: float, spec: str, n: int, scale: float = 1.0) -> str:
    """`mean +- std`, or the mean alone from a single seed (a std of one value says nothing)."""
    text = _f(scale * mean, spec)
    return text if n < 2 else f"{text} +- {_f(scale * std, spec.lstrip('+'))}"


def to_markdown(res: dict[str, Any], title: str) -> str:
    from recsys_mtl.metrics.names import normalized_error_label

    base, tasks, methods = res["baseline"], res["tasks"], res["methods"]
    names = list(methods)
    types = res.get("task_types") or ["binary"] * len(tasks)
    err = normalized_error_label(types)  # "NE", or "NE|NMSE" with regression tasks
    mixed = err != "NE"
    labels = [f"{t} (nmse)" if mixed and k == "regression" else t for t, k in zip(tasks, types)]
    lines = [f"# {title}", ""]
    model = res.get("resolved_train_config", {}).get("model", {})
    lines.append(f"Test rows: {res['test_rows']:,}; tasks: {len(tasks)}; seeds: {res['seeds']}; baseline: `{base}`. "
                 f"Training config `{res['train_config']}` with {res['set'] or 'no overrides'} "
                 f"(architecture {model.get('architecture', '?')}; the resolved config is in results.json). "
                 f"Code: {', '.join(res.get('git_commits', [])) or '?'}.")
    lines.append("")
    if mixed:
        lines.append(f"{err}: each task's normalized error, NE for binary tasks and NMSE (MSE / label variance, "
                     "1 - R^2) for regression tasks, marked (nmse); every NE below is that value.")
        lines.append("")
    lines.append("Mean relative NE change = mean over tasks of NE_method / NE_equal - 1 on the same seed "
                 "(negative = better); mean +- std over seeds, and a 95% paired bootstrap CI over test rows "
                 "on the pooled predictions of all seeds (it covers test-set sampling, not seed-to-seed "
                 "variation, which the std shows). Tasks better: tasks with lower NE than equal, per seed. "
                 "Largest weight: the largest task weight at any step of any seed (equal gives 1 to every task; "
                 "famo, group_dro, random and softmax_uncertainty give weights that sum to 1).")
    lines.append("")
    lines.append("| method | arguments | mean rel. NE change vs equal | 95% CI (pooled bootstrap) | tasks better (per seed) "
                 "| mean NE | mean AUC | largest weight | train s/run |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for n in names:
        m = methods[n]
        pb = m.get("pooled_bootstrap")
        ci = f"[{_f(100 * pb['ci95'][0], '+.2f')}%, {_f(100 * pb['ci95'][1], '+.2f')}%]" if pb else "-"
        better = "/".join(str(m["per_seed"][str(s)].get("tasks_better", "-")) for s in m["seeds_done"])
        k = len(m["seeds_done"])
        rel = "0 (baseline)" if n == base else _pm(m["mean_rel_ne_change"], m["mean_rel_ne_change_std"], "+.2f", k, 100) + "%"
        diverged = [s for s in m["seeds_done"] if not m["per_seed"][str(s)]["finite_predictions"]]
        note = f" (non-finite predictions, seed {diverged})" if diverged else ""
        lines.append(f"| {n}{note} | {_args_text(m['args'], m.get('resolved_args', {}))} | {rel} | {ci} | {better if n != base else '-'} "
                     f"| {_pm(m['mean_ne'], m['mean_ne_std'], '.4f', k)} "
                     f"| {_pm(m['mean_auc'], m['mean_auc_std'], '.4f', k)} | {_f(m['largest_weight'], '.3g')} "
                     f"| {_f(m['train_seconds_mean'], '.0f')} |")

    def per_task(key_mean: str, key_std: str, label: str, digits: str) -> None:
        lines.extend(["", f"## Per-task test {label} (mean +- std over seeds)", ""])
        lines.append(f"| task | {'base rate|mean' if mixed else 'base rate'} | " + " | ".join(names) + " |")
        lines.append("|---|---|" + "---|" * len(names))
        for t, task in enumerate(labels):
            cells = [_pm(methods[n][key_mean][t], methods[n][key_std][t], digits, len(methods[n]["seeds_done"]))
                     for n in names]
            lines.append(f"| {task} | {_f(res['test_base_rate'][t], '.4f')} | " + " | ".join(cells) + " |")

    per_task("ne_mean", "ne_std", err, ".4f")
    lines.extend(["", f"## Per-task relative {err} change vs equal (mean over seeds, %)", ""])
    lines.append("| task | " + " | ".join(n for n in names if n != base) + " |")
    lines.append("|---|" + "---|" * (len(names) - 1))
    for t, task in enumerate(labels):
        cells = [_f(100 * methods[n]["rel_ne_change_mean"][t], "+.2f") for n in names if n != base]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    per_task("auc_mean", "auc_std", "AUC", ".4f")
    if res.get("gauc_group"):
        per_task("gauc_mean", "gauc_std", f"GAUC by {res['gauc_group']} (each group's AUC weighted by its labelled "
                 "rows; single-class groups skipped)", ".4f")
    return "\n".join(lines) + "\n"


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def run_experiment(cfg: WeightingExperimentConfig, out: Path, *, methods: list[str] | None = None,
                   seeds: list[int] | None = None, jobs: int = 1, threads: int = 1, rerun: bool = False,
                   title: str | None = None) -> dict[str, Any]:
    methods = list(methods or cfg.methods)
    seeds = list(seeds if seeds is not None else cfg.seeds)
    unknown = [m for m in methods if m not in cfg.methods]
    if unknown:
        from recsys_mtl.config.loader import ConfigError

        raise ConfigError(f"--methods: {', '.join(unknown)} not in the experiment config's methods "
                          f"({', '.join(cfg.methods)})")
    if cfg.baseline not in methods:
        methods = [cfg.baseline] + methods  # every comparison needs the baseline's runs
    out.mkdir(parents=True, exist_ok=True)
    runs = run_grid(cfg, out, methods, seeds, jobs=jobs, threads=threads, rerun=rerun)
    res = summarize(cfg, out, methods, seeds, runs)
    res["description"] = cfg.description
    (out / "results.json").write_text(json.dumps(_json_safe(res), indent=1))
    (out / "results.md").write_text(to_markdown(res, title or f"Task weighting on {Path(cfg.dataset.dir).name}"))
    log.info("wrote %s and %s", out / "results.json", out / "results.md")
    return res


# ------------------------------------------------------------------------------ CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=sorted(DATASET_CONFIGS), help="use the shipped experiment config for it")
    p.add_argument("--config", type=Path, help="experiment config YAML (instead of --dataset)")
    p.add_argument("--out", type=Path, required=True, help="output folder: runs/, results.json, results.md")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default: the config's seeds")
    p.add_argument("--methods", nargs="+", default=None, help="default: all the config's methods (equal is always run)")
    p.add_argument("--data", type=Path, default=None, help="prepared data folder (overrides dataset.dir)")
    p.add_argument("--src", type=Path, default=None, help="KuaiRand source folder (overrides dataset.src)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra training-config override for every run (appended to the config's `set`)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once, one process each (0: in this process)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--rerun", action="store_true", help="retrain runs that already finished")


def run(args: argparse.Namespace) -> int:
    from recsys_mtl.config.loader import ConfigError

    if (args.dataset is None) == (args.config is None):
        raise ConfigError("experiment weighting: give exactly one of --dataset or --config")
    cfg = WeightingExperimentConfig.load(args.config or DATASET_CONFIGS[args.dataset])
    ds = cfg.dataset
    if args.data or args.src:
        ds = dataclasses.replace(ds, dir=str(args.data or ds.dir), src=str(args.src) if args.src else ds.src)
    cfg = dataclasses.replace(cfg, dataset=ds, set=list(cfg.set) + list(args.overrides))
    res = run_experiment(cfg, args.out, methods=args.methods, seeds=args.seeds, jobs=args.jobs, threads=args.threads,
                         rerun=args.rerun, title=f"Task weighting on {args.dataset or Path(args.config).stem}")
    print((args.out / "results.md").read_text().split("\n## ")[0])
    return 0 if res else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="one run of the weighting experiment (internal)")
    p.add_argument("--one-run", type=Path, required=True)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    train_and_predict(a.one_run, a.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
