"""Plain ``torch.nn.Module`` building blocks of the v2 (refactored) models.

One module per component family; add new families (e.g. ``bert.py``) as
separate files and re-export them below.
"""

from .cnn_encoder import CNNEncoder
from .fusion import ConcatenationFusion
from .tabular import TabularEmbedding, combine_tabular_fields

__all__ = [
    "CNNEncoder",
    "ConcatenationFusion",
    "TabularEmbedding",
    "combine_tabular_fields",
]
