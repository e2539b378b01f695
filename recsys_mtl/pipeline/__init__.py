"""Batch jobs composed from train, evaluate and compare: the daily incremental pipeline."""
