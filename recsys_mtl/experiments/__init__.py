"""Experiments: grids of training runs that differ in one section, evaluated offline and tabulated.

`recsys-mtl experiment weighting CONFIG` (weighting.py): every (method, seed) on one
dataset, exact per-task test NE/AUC, relative NE change against equal weights.
"""
