"""Offline evaluation of trained models: load a checkpoint (or a tracked run's model), score an eval set,
compare against a baseline. `recsys-mtl evaluate` is `commands.py`."""
