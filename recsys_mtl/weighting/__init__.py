"""Task weighting: per-task losses L[T] -> detached weights w[T]. See base.py for the API."""

from recsys_mtl.weighting.base import (LabelStats, WeightingMethod, build_weighting, check_weighting_args,
                                      register_weighting, weighting_methods, weighting_signature)
from recsys_mtl.weighting.dwa import DynamicWeightAverage
from recsys_mtl.weighting.equal import EqualWeights
from recsys_mtl.weighting.famo import FAMO
from recsys_mtl.weighting.go4align import GO4Align
from recsys_mtl.weighting.group_dro import GroupDRO
from recsys_mtl.weighting.kmeans1d import kmeans_1d_exact
from recsys_mtl.weighting.random_weighting import RandomLossWeighting
from recsys_mtl.weighting.softmax_uncertainty import SoftmaxUncertaintyWeighting
from recsys_mtl.weighting.starvation import StarvationMonitor, StarvingTaskWarning
from recsys_mtl.weighting.static import StaticWeights
from recsys_mtl.weighting.uncertainty import UncertaintyWeighting

__all__ = [
    "LabelStats",
    "WeightingMethod",
    "build_weighting",
    "check_weighting_args",
    "register_weighting",
    "weighting_methods",
    "weighting_signature",
    "DynamicWeightAverage",
    "EqualWeights",
    "FAMO",
    "GO4Align",
    "GroupDRO",
    "kmeans_1d_exact",
    "RandomLossWeighting",
    "SoftmaxUncertaintyWeighting",
    "StarvationMonitor",
    "StarvingTaskWarning",
    "StaticWeights",
    "UncertaintyWeighting",
]
