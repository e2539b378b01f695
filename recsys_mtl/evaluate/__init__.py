"""Offline evaluation of trained models: load a checkpoint (or a tracked run's model), score an eval set,
compare against a baseline. `recsys-mtl evaluate` is `commands.py`."""

#: rows per forward pass when scoring on CPU (evaluate, predict, the pipeline's gate). Smaller batches keep the
#: [B, T, H] activations in cache: the demo's 32-task MMoE scored 88k rows/s at 2048 against 64k at 4096 and 57k at
#: 8192 (one thread; docs/performance.md); below 2048 the per-batch statistics start to cost more.
SCORING_BATCH_SIZE = 2048
