"""Parquet -> Batch(dense, KeyedJaggedTensor, labels, label_mask): the data path.

`Batch` is imported lazily so that light users (the CLI's argument parsing, error
types) do not pay for importing torchrec.
"""

from recsys_mtl.data.errors import DataError

__all__ = ["Batch", "DataError"]


def __getattr__(name: str):
    if name == "Batch":
        from recsys_mtl.data.batch import Batch

        return Batch
    raise AttributeError(f"module 'recsys_mtl.data' has no attribute {name!r}")
