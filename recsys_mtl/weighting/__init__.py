"""Task weighting: per-task losses L[T] -> detached weights w[T]. See base.py for the API."""

from recsys_mtl.weighting.base import WeightingMethod, build_weighting, register_weighting, weighting_methods
from recsys_mtl.weighting.equal import EqualWeights

__all__ = ["WeightingMethod", "build_weighting", "register_weighting", "weighting_methods", "EqualWeights"]
