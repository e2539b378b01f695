"""Training: DMP sharding, fused embedding optimizer + dense optimizer, pipeline loop, checkpoints."""

from recsys_mtl.train.trainer import BatchSource, Trainer, TrainerCallback, TrainResult

__all__ = ["Trainer", "TrainResult", "TrainerCallback", "BatchSource"]
