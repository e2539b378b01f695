"""Validated settings: feature specs and configs, loaded by one YAML loader."""

from recsys_mtl.config.features import DenseFeature, FeatureSpec, SparseFeature, TableSpec, TaskSpec
from recsys_mtl.config.loader import ConfigError, Where, flatten, from_dict, load_yaml, read_yaml, to_dict

__all__ = [
    "ConfigError", "Where", "from_dict", "load_yaml", "read_yaml", "to_dict", "flatten",
    "FeatureSpec", "SparseFeature", "DenseFeature", "TaskSpec", "TableSpec",
]
