"""The daily pipeline's config (`pipelines/*.yaml`), loaded by the one config loader."""

from __future__ import annotations

import dataclasses

from recsys_mtl.config.loader import Where
from recsys_mtl.config.tracking import TrackingConfig


@dataclasses.dataclass(frozen=True)
class GateConfig:
    """When a candidate replaces the champion.

    Accepted iff its mean relative NE change against the champion (on the champion's
    and the candidate's predictions for the same next-day rows) is below
    `-min_mean_improvement`, and no guarded task's relative NE change exceeds `tolerance`.
    """

    guarded_tasks: list[str] = dataclasses.field(default_factory=list)
    tolerance: float = 0.005
    min_mean_improvement: float = 0.0
    bootstrap_samples: int = 100

    def validate(self, where: Where) -> None:
        if self.tolerance < 0:
            raise where.child("tolerance").error(f"must be >= 0, got {self.tolerance}")
        if self.bootstrap_samples < 10:
            raise where.child("bootstrap_samples").error(f"must be >= 10, got {self.bootstrap_samples}")


@dataclasses.dataclass(frozen=True)
class RegistryConfig:
    model_name: str
    alias: str = "champion"


@dataclasses.dataclass(frozen=True)
class DailyPipelineConfig:
    """name: job name (MLflow run names are `<name>-<date>`; the experiment is tracking.experiment)
    data: date-partitioned roots (`date=YYYY-MM-DD/` folders); several roots are merged
    spec: feature spec (default: the first root's _feature_spec.yaml, data/folder.py)
    train_config: the base training config; the pipeline sets its data paths, output
        folder, warm start and tracking per date
    train_overrides: `section.key=value` applied to the base config for every date
    work_dir: step state, checkpoints and predictions
    """

    name: str
    data: list[str]
    train_config: str
    work_dir: str
    registry: RegistryConfig
    spec: str | None = None
    train_overrides: list[str] = dataclasses.field(default_factory=list)
    gate: GateConfig = dataclasses.field(default_factory=GateConfig)
    tracking: TrackingConfig = dataclasses.field(default_factory=TrackingConfig)

    def validate(self, where: Where) -> None:
        if not self.data:
            raise where.child("data").error("at least one data root is required")
