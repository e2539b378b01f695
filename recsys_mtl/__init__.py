"""recsys-mtl: multi-task recommendation training on TorchRec."""

__version__ = "0.1.0"
