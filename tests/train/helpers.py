"""Config builders for train tests (in-memory data, tiny model)."""

from __future__ import annotations

from pathlib import Path

from recsys_mtl.config.loader import from_dict
from recsys_mtl.config.train import TrainConfig


def merge(base: dict, changes: dict) -> dict:
    out = dict(base)
    for k, v in changes.items():
        out[k] = merge(out.get(k, {}), v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def tiny_config(output_dir: Path, **sections) -> TrainConfig:
    base = {
        "data": {"train_path": "-", "spec": "-", "batch_size": 16},
        "model": {"architecture": "mmoe", "dense_tower": [8], "task_tower": [8],
                  "mmoe": {"num_experts": 2, "expert_hidden": [16]}},
        "optim": {"embedding": {"type": "rowwise_adagrad", "lr": 0.1}, "dense": {"type": "adam", "lr": 0.01}},
        "train": {"epochs": 1, "log_every": 1, "output_dir": str(output_dir), "progress_bar": False,
                  "deterministic": True},
    }
    return from_dict(TrainConfig, merge(base, sections), "tiny_config")
