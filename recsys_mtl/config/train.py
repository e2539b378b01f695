"""Training config: what `recsys-mtl train CONFIG` reads. Loaded by the one config loader.

    data:      {train_path, eval_path, spec, batch_size, eval_batch_size, shuffle, shuffle_buffer_rows, num_workers}
    model:     {architecture: shared_bottom|mmoe|ple, dense_tower, task_tower, dropout, embedding_dtype: fp32|fp16,
                wide, wide_l2, wide_l2_tasks,
                wide_id_scale: {TASK: s},
                feature_dropout: {FEATURE: p}, head_bias,
                shared_bottom: {hidden}, mmoe: {num_experts, expert_hidden},
                ple: {levels, shared_experts, task_experts, expert_hidden}}
    sharding:  {tables: {TABLE: table_wise|row_wise|column_wise|data_parallel}, memory_per_rank_gb}
               (tables not listed: the planner decides)
    optim:     {embedding: {type: rowwise_adagrad|adagrad|sgd, lr, eps},
                dense: {type: adam|adagrad|sgd, lr, weight_decay, wide_lr, clip_norm},
                schedule: {warmup_steps, decay: none|linear|cosine, min_lr_ratio}}
    weighting: {method: equal, args: {}}
    train:     {epochs, task_epochs: {TASK: N}, max_steps, eval_every, log_every, seed, device, precision: fp32|tf32|bf16,
                output_dir,
                deterministic, progress_bar, progress_every_s, checkpoint: {every, keep, dir, resume}}
    tracking:  {enabled, tracking_uri, experiment, run_name, train_metrics, train_metrics_every_n_steps,
                log_model, register_model, ...}   (recsys_mtl/config/tracking.py)
    evaluation: {gauc_group}   (`recsys-mtl evaluate`: the Parquet column whose groups GAUC averages over, e.g. user_id)

Paths written in a config file are relative to that file (`data.spec: ../feature_specs/x.yaml` next to
`configs/`), paths given with `--set` to the working directory; both become absolute when loaded, so the
config saved in a checkpoint means the same wherever it is read. URIs (`s3://...`) are left as they are.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from recsys_mtl.config.loader import Where
from recsys_mtl.config.tracking import TrackingConfig

SHARDING_TYPES = ("table_wise", "row_wise", "column_wise", "data_parallel")
ShardingChoice = Literal["table_wise", "row_wise", "column_wise", "data_parallel"]


def _positive(where: Where, key: str, value: float | int | None, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise where.child(key).error(f"must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _layer_sizes(where: Where, key: str, sizes: list[int], allow_empty: bool = True) -> None:
    if not sizes and not allow_empty:
        raise where.child(key).error("needs at least one layer size")
    for i, s in enumerate(sizes):
        if s < 1:
            raise where.child(key).child(i).error(f"layer sizes must be >= 1, got {s}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    train_path: str
    spec: str
    eval_path: str | None = None
    batch_size: int = 512
    eval_batch_size: int | None = None
    shuffle: bool = True
    shuffle_buffer_rows: int = 0
    num_workers: int = 0
    #: a task with no labelled row in the training set: "warn" (at start) or "error" (stop before training)
    unlabelled_tasks: str = "warn"

    def validate(self, where: Where) -> None:
        if self.unlabelled_tasks not in ("warn", "error"):
            raise where.child("unlabelled_tasks").error(f"must be warn or error, got {self.unlabelled_tasks!r}")
        _positive(where, "batch_size", self.batch_size)
        _positive(where, "eval_batch_size", self.eval_batch_size)
        _positive(where, "shuffle_buffer_rows", self.shuffle_buffer_rows, allow_zero=True)
        _positive(where, "num_workers", self.num_workers, allow_zero=True)


@dataclasses.dataclass(frozen=True)
class SharedBottomConfig:
    hidden: list[int] = dataclasses.field(default_factory=lambda: [256, 128])

    def validate(self, where: Where) -> None:
        _layer_sizes(where, "hidden", self.hidden, allow_empty=False)


@dataclasses.dataclass(frozen=True)
class MMoEConfig:
    num_experts: int = 4
    expert_hidden: list[int] = dataclasses.field(default_factory=lambda: [128, 64])

    def validate(self, where: Where) -> None:
        _positive(where, "num_experts", self.num_experts)
        _layer_sizes(where, "expert_hidden", self.expert_hidden, allow_empty=False)


@dataclasses.dataclass(frozen=True)
class PLEConfig:
    levels: int = 2
    shared_experts: int = 2
    task_experts: int = 1
    expert_hidden: list[int] = dataclasses.field(default_factory=lambda: [64])

    def validate(self, where: Where) -> None:
        _positive(where, "levels", self.levels)
        _positive(where, "shared_experts", self.shared_experts)
        _positive(where, "task_experts", self.task_experts)
        _layer_sizes(where, "expert_hidden", self.expert_hidden, allow_empty=False)


#: the built-in architectures' sections of configs written before `model.args`
LEGACY_ARCHITECTURE_SECTIONS = ("shared_bottom", "mmoe", "ple")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    architecture: str = "mmoe"
    dense_tower: list[int] = dataclasses.field(default_factory=lambda: [64])
    task_tower: list[int] = dataclasses.field(default_factory=lambda: [32])
    dropout: float = 0.0
    # storage of the embedding tables (TorchRec's table data type): fp16 halves their memory and lookup traffic;
    # the pooled embeddings enter the dense part as float32 (fp16 tables are part of the model: a checkpoint
    # resumes only with the dtype it was trained with)
    embedding_dtype: Literal["fp32", "fp16"] = "fp32"
    # wide part (Wide & Deep): every table row also holds one weight per task, summed into that
    # task's logit with a linear term on the dense features; a per-task logistic regression over
    # the ids inside the same tables. Costs T extra floats (rounded up to a multiple of 4) per row.
    wide: bool = False
    # L2 on the wide id weights each batch looks up: wide_l2 * mean over rows of the sum over
    # features and tasks of the squared pooled wide columns. A training-loss term, so it works with
    # the fused embedding optimizer on every device. Rare tasks carry little likelihood, so it
    # mostly stops them memorising rare ids (user_id) through the wide part.
    wide_l2: float = 0.0
    # per-task wide_l2 (task -> value; tasks not listed take wide_l2): rare tasks differ in how much
    # memorised-id weight they can afford (on KuaiRand is_follow needs it, is_forward does not)
    wide_l2_tasks: dict[str, float] = dataclasses.field(default_factory=dict)
    # per-task factor on the wide id output (task -> s >= 0; tasks not listed: 1): the task's logit gets
    # s * (its summed wide id weights). With the element-wise `adagrad` embedding optimizer, whose step
    # ignores the gradient's scale, this is s times those weights' learning rate (up to eps), so one task's
    # id weights can learn faster or slower than the shared deep embeddings (0 turns them off)
    wide_id_scale: dict[str, float] = dataclasses.field(default_factory=dict)
    # id dropout while training: feature -> fraction of rows whose pooled embedding (deep and wide columns)
    # is zeroed, as if the id were unknown; never at evaluation. Trains the model for what it meets on new
    # ids (cold-start items) and makes it lean on features that generalise rather than memorised ids
    feature_dropout: dict[str, float] = dataclasses.field(default_factory=dict)
    # "prior": start each head's bias at the log-odds of its task's label rate in the first training
    # batches, so early steps do not spend (and Adagrad accumulators do not absorb) the bias shift; "zero": 0
    head_bias: Literal["prior", "zero"] = "prior"
    # the architecture's constructor arguments (models/architectures/*, e.g. mmoe: num_experts, expert_hidden);
    # checked against its signature when the config loads
    args: dict[str, Any] = dataclasses.field(default_factory=dict)
    # configs written before `args`: one section per built-in architecture; the chosen one's section is read as its
    # args (architecture_args), so old configs and checkpoints load unchanged
    shared_bottom: SharedBottomConfig = dataclasses.field(default_factory=SharedBottomConfig)
    mmoe: MMoEConfig = dataclasses.field(default_factory=MMoEConfig)
    ple: PLEConfig = dataclasses.field(default_factory=PLEConfig)

    def architecture_args(self) -> dict[str, Any]:
        """The chosen architecture's arguments: `args` over its old-style section (`model.mmoe: {...}`), the one
        compatibility shim for configs and checkpoints from before `args` (their model signature matches)."""
        from recsys_mtl.config.loader import to_dict

        section = getattr(self, self.architecture, None) if self.architecture in LEGACY_ARCHITECTURE_SECTIONS else None
        return {**(to_dict(section) if section is not None else {}), **self.args}

    def validate(self, where: Where) -> None:
        from recsys_mtl.models.architectures.registry import architectures, check_architecture_args

        known = architectures()
        if self.architecture not in known:
            raise where.child("architecture").error(
                f"unknown architecture {self.architecture!r}; set it to one of: {', '.join(sorted(known))}"
            )
        try:
            check_architecture_args(self.architecture, self.args)
        except ValueError as exc:
            raise where.child("args").error(str(exc)) from None
        _layer_sizes(where, "dense_tower", self.dense_tower)
        _layer_sizes(where, "task_tower", self.task_tower)
        if not 0.0 <= self.dropout < 1.0:
            raise where.child("dropout").error(f"must be in [0, 1), got {self.dropout}")
        _positive(where, "wide_l2", self.wide_l2, allow_zero=True)
        if self.wide_l2 and not self.wide:
            raise where.child("wide_l2").error(f"is {self.wide_l2} but model.wide is false; set wide: true or drop wide_l2")
        for name, value in self.wide_l2_tasks.items():
            _positive(where.child("wide_l2_tasks"), name, value, allow_zero=True)
        if any(self.wide_l2_tasks.values()) and not self.wide:
            raise where.child("wide_l2_tasks").error("is set but model.wide is false; set wide: true or drop wide_l2_tasks")
        for name, value in self.wide_id_scale.items():
            _positive(where.child("wide_id_scale"), name, value, allow_zero=True)
        if self.wide_id_scale and not self.wide:
            raise where.child("wide_id_scale").error("is set but model.wide is false; set wide: true or drop wide_id_scale")
        for name, p in self.feature_dropout.items():
            if not 0.0 <= p < 1.0:
                raise where.child("feature_dropout").child(name).error(f"must be in [0, 1), got {p}")


@dataclasses.dataclass(frozen=True)
class ShardingConfig:
    """Per-table forced sharding; tables not listed are left to the planner."""

    tables: dict[str, ShardingChoice] = dataclasses.field(default_factory=dict)
    # memory one rank may use for embedding tables + optimizer state; null = the device's memory
    memory_per_rank_gb: float | None = None

    def validate(self, where: Where) -> None:
        _positive(where, "memory_per_rank_gb", self.memory_per_rank_gb)


@dataclasses.dataclass(frozen=True)
class EmbeddingOptimConfig:
    """Fused into backward by FBGEMM (CPU supports sgd, adagrad, rowwise_adagrad)."""

    type: Literal["rowwise_adagrad", "adagrad", "sgd"] = "rowwise_adagrad"
    lr: float = 0.05
    eps: float = 1e-8

    def validate(self, where: Where) -> None:
        _positive(where, "lr", self.lr)
        _positive(where, "eps", self.eps)


@dataclasses.dataclass(frozen=True)
class DenseOptimConfig:
    type: Literal["adam", "adagrad", "sgd"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    # learning rate of the wide part's dense weights (model.wide), null = lr. The wide part is a
    # logistic regression that starts at 0: at a deep-tower lr it barely moves in a short run
    wide_lr: float | None = None
    # clip the dense parameters' gradient to this global L2 norm before each dense step (null: no clipping);
    # the embedding tables' optimizer runs inside backward (FBGEMM) and is not clipped
    clip_norm: float | None = None

    def validate(self, where: Where) -> None:
        _positive(where, "lr", self.lr)
        _positive(where, "wide_lr", self.wide_lr)
        _positive(where, "clip_norm", self.clip_norm)
        _positive(where, "weight_decay", self.weight_decay, allow_zero=True)


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """Learning-rate schedule of both optimizers (train/schedule.py): each param group's lr times a factor
    that rises linearly over warmup_steps, then decays (none | linear | cosine) to min_lr_ratio at the
    last planned step (train.epochs' batches, or train.max_steps if fewer)."""

    warmup_steps: int = 0
    decay: Literal["none", "linear", "cosine"] = "none"
    min_lr_ratio: float = 0.0

    def validate(self, where: Where) -> None:
        _positive(where, "warmup_steps", self.warmup_steps, allow_zero=True)
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise where.child("min_lr_ratio").error(f"must be in [0, 1], got {self.min_lr_ratio}")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    embedding: EmbeddingOptimConfig = dataclasses.field(default_factory=EmbeddingOptimConfig)
    dense: DenseOptimConfig = dataclasses.field(default_factory=DenseOptimConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)


@dataclasses.dataclass(frozen=True)
class WeightingConfig:
    method: str = "equal"
    args: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: run the weighting step under torch.compile(fullgraph=True): on an H100, GO4Align at T=64
    #: took 0.39 ms compiled against 2.0 ms eager (dozens of tiny kernels, launch-bound); the
    #: first step pays the compile (seconds). On CPU the eager step is already negligible.
    compile: bool = False

    def validate(self, where: Where) -> None:
        from recsys_mtl.weighting import check_weighting_args, weighting_methods

        known = weighting_methods()
        if self.method not in known:
            raise where.child("method").error(
                f"unknown weighting method {self.method!r}; set it to one of: {', '.join(sorted(known))}"
            )
        try:
            check_weighting_args(self.method, self.args, require_all=False)  # the experiment derives some later
        except ValueError as exc:
            raise where.child("args").error(f"{exc} (args belong to weighting.method; give the new method's with "
                                            f"--set weighting.args='{{...}}', or {{}} for its defaults)") from None


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every: int = 0  # steps between checkpoints; 0 = only at the end of training
    keep: int = 2  # complete checkpoints kept on disk
    dir: str | None = None  # default: <output_dir>/checkpoints
    resume: bool = True  # continue from the latest complete checkpoint in dir
    at_end: bool = True  # checkpoint the end of training (false: only `every`; benchmarks, throwaway runs)

    def validate(self, where: Where) -> None:
        _positive(where, "every", self.every, allow_zero=True)
        _positive(where, "keep", self.keep)


@dataclasses.dataclass(frozen=True)
class TrainSection:
    epochs: int = 1
    # per-task early stop fixed in advance (chosen on a validation split): task -> the number of
    # epochs its labels train on; afterwards its labels are masked (weight 0, `present` false), so
    # tasks that overfit early stop while rare ones keep training. Tasks not listed, or with N >= epochs
    # (a run whose epochs are overridden lower), train every epoch.
    task_epochs: dict[str, int] = dataclasses.field(default_factory=dict)
    max_steps: int | None = None  # stop after this many steps in total (over all epochs)
    eval_every: int = 0  # steps between evaluations; 0 = after each epoch
    log_every: int = 50
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # fp32; tf32: float32 matmuls on TensorFloat-32 tensor cores (CUDA only, fp32 on the CPU); bf16: the dense
    # tower, architecture, task towers and heads under bfloat16 autocast (CUDA and CPU), with the losses, the
    # weighting and the metrics in float32. No gradient scaling is needed for bf16 (float32's exponent range)
    precision: Literal["fp32", "tf32", "bf16"] = "fp32"
    output_dir: str = "runs/default"
    deterministic: bool = False  # torch.use_deterministic_algorithms, bitwise-repeatable runs
    progress_bar: bool = True
    progress_every_s: float = 30.0  # seconds between progress log lines when stderr is a file or pipe (0: every step)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    # warm start: a model directory (config.yaml, feature_spec.yaml, checkpoint/), a run's output_dir, its
    # checkpoints folder or one checkpoint, of a model of the same shape; its weights, optimizer and weighting state seed a fresh run (not its
    # step, data position or RNG). Ignored when the run resumes from its own checkpoint.
    init_from: str | None = None

    def validate(self, where: Where) -> None:
        _positive(where, "epochs", self.epochs)
        for task, n in self.task_epochs.items():
            if n < 1:
                raise where.child("task_epochs").child(task).error(f"must be >= 1 (epochs of training), got {n}")
        _positive(where, "max_steps", self.max_steps)
        _positive(where, "eval_every", self.eval_every, allow_zero=True)
        _positive(where, "log_every", self.log_every)
        _positive(where, "progress_every_s", self.progress_every_s, allow_zero=True)


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """How `recsys-mtl evaluate` scores this model (not part of training)."""

    gauc_group: str | None = None  # a Parquet column of group ids (e.g. user_id): adds grouped AUC per task

    def validate(self, where: Where) -> None:
        if self.gauc_group is not None and not self.gauc_group:
            raise where.child("gauc_group").error("must name a column (or be null for no GAUC)")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    data: DataConfig
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    sharding: ShardingConfig = dataclasses.field(default_factory=ShardingConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    weighting: WeightingConfig = dataclasses.field(default_factory=WeightingConfig)
    train: TrainSection = dataclasses.field(default_factory=TrainSection)
    tracking: TrackingConfig = dataclasses.field(default_factory=TrackingConfig)
    evaluation: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | None = None, *,
             relative_to_file: bool = True) -> "TrainConfig":
        """Load YAML, then apply `section.key=value` overrides (values parsed as YAML). `relative_to_file=False`
        keeps relative paths (the file's and the overrides') as written (a config saved with a checkpoint: its paths were absolute,
        or, from older versions or configs built in code, relative to the working directory of the run)."""
        from recsys_mtl.config.loader import from_dict, read_yaml

        data = read_yaml(path) or {}
        if relative_to_file:
            resolve_paths(data, Path(path).parent)  # the file's own paths: relative to the file
        if not overrides:
            return from_dict(cls, data, Where(str(path)))
        _drop_args_of_another_method(data, overrides)
        apply_overrides(data, overrides, source=str(path))
        if relative_to_file:
            resolve_paths(data, Path.cwd())  # the command line's: relative to the working directory
        return from_dict(cls, data, Where(f"{path} (with overrides)"))

    def check_paths(self) -> None:
        """ConfigError naming each input path key whose local file or folder is missing (all in one message)."""
        from recsys_mtl.config.loader import ConfigError

        problems = [f"{key}: {value}: no such file or directory"
                    for key, value in (("data.spec", self.data.spec), ("data.train_path", self.data.train_path),
                                       ("data.eval_path", self.data.eval_path), ("train.init_from", self.train.init_from))
                    if value is not None and "://" not in value and not Path(value).exists()]
        if problems:
            raise ConfigError.of(problems)


#: (section, ..., key) of every path setting
PATH_KEYS = (("data", "train_path"), ("data", "eval_path"), ("data", "spec"), ("train", "output_dir"),
             ("train", "init_from"), ("train", "checkpoint", "dir"))


def resolve_paths(data: Any, base: Path) -> None:
    """Make each relative local path setting (`PATH_KEYS`) in `data` (a config's raw mapping) absolute against
    `base`, in place; URIs, absolute paths and values of other types (the loader reports those) are left alone."""
    from recsys_mtl.config.loader import resolve_paths as resolve

    resolve(data, base, PATH_KEYS)


def _drop_args_of_another_method(data: Any, overrides: list[str]) -> None:
    """`--set weighting.method=X` without `weighting.args`: the file's args were written for its own method, so
    they go (X starts from its defaults) instead of failing as X's arguments."""
    keys = [item.partition("=")[0] for item in overrides]
    weighting = data.get("weighting") if isinstance(data, dict) else None
    if "weighting.method" not in keys or not isinstance(weighting, dict) or "args" not in weighting:
        return
    if any(key == "weighting.args" or key.startswith("weighting.args.") or key == "weighting" for key in keys):
        return
    new_method = next(item.partition("=")[2] for item in reversed(overrides) if item.startswith("weighting.method="))
    if new_method.strip() != str(weighting.get("method", "equal")):
        del weighting["args"]


def apply_overrides(data: dict, overrides: list[str], source: str = "<config>") -> None:
    """`train.seed=3` sets data["train"]["seed"] = 3 in place (the value is parsed as YAML)."""
    import yaml

    from recsys_mtl.config.loader import ConfigError, yaml_problem

    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{source}: override {item!r} must look like section.key=value")
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"{source}: override {item!r}: {p!r} is not a section")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: override {item!r}: the value {raw!r} is not valid YAML ({yaml_problem(exc)}); "
                              f"quote it for a string, e.g. {key}='\"...\"'") from None


__all__ = [
    "TrainConfig",
    "DataConfig",
    "ModelConfig",
    "SharedBottomConfig",
    "MMoEConfig",
    "PLEConfig",
    "ShardingConfig",
    "OptimConfig",
    "EmbeddingOptimConfig",
    "DenseOptimConfig",
    "WeightingConfig",
    "TrainSection",
    "CheckpointConfig",
    "EvaluationConfig",
    "SHARDING_TYPES",
    "apply_overrides",
    "resolve_paths",
    "PATH_KEYS",
]
