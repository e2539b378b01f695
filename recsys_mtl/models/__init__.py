"""Models: plain nn.Modules. `MultiTaskModel` (EBC + dense tower + architecture + T heads)."""

from recsys_mtl.models.architectures import ARCHITECTURES
from recsys_mtl.models.multitask import MultiTaskModel, embedding_bag_configs

__all__ = ["ARCHITECTURES", "MultiTaskModel", "embedding_bag_configs"]
