"""Score a whole eval set with a loaded model: logits, labels and mask of every row, in file order."""

from __future__ import annotations

from pathlib import Path

import torch


def score_eval_set(model: torch.nn.Module, spec, data_path: str | Path,
                   batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every row of `data_path` once, [N, T] each (reader in eval mode: one slot, no shuffle,
    `drop_remainder=False`). `predict` pads the last batch with unlabelled rows; they are cut off."""
    from recsys_mtl.data.stream import ParquetStream
    from recsys_mtl.train.evaluation import predict

    stream = ParquetStream(str(data_path), spec, batch_size, rank=0, world_size=1, num_workers=0, seed=0,
                           shuffle=False, shuffle_buffer_rows=0, drop_remainder=False)
    if stream.num_rows == 0:
        from recsys_mtl.data.errors import DataError

        raise DataError(f"{data_path}: the eval set has no rows; expected at least one labelled row to score")
    stream.set_epoch(0)
    logits, labels, mask = predict(model, stream, spec, batch_size, torch.device("cpu"), 1)
    n = stream.num_rows
    return logits[:n], labels[:n], mask[:n]


__all__ = ["score_eval_set"]
