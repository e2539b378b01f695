"""Parquet -> Batch(dense, KeyedJaggedTensor, labels, label_mask): the data path."""

from recsys_mtl.data.batch import Batch
from recsys_mtl.data.errors import DataError

__all__ = ["Batch", "DataError"]
