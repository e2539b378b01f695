"""Benchmarks: how much each stage costs (weighting.py: the task-weighting step)."""
