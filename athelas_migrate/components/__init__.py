"""Plain ``torch.nn.Module`` building blocks of the v2 (refactored) models.

One module per component family; add new families (e.g. ``bert.py``) as
separate files and re-export them below.
"""

from .cnn_encoder import CNNEncoder
from .fusion import ConcatenationFusion
from .tabular import TabularEmbedding, combine_tabular_fields

_BERT = ["BertEncoder", "CrossAttentionFusion", "GateFusion", "MixtureOfExperts", "MLPBlock",
         "BidirectionalCrossAttention"]


def __getattr__(name: str):
    """BERT-based classes load lazily (they import transformers)."""
    if name in _BERT:
        from . import bert

        return getattr(bert, name)
    raise AttributeError(name)


__all__ = [
    *_BERT,
    "CNNEncoder",
    "ConcatenationFusion",
    "TabularEmbedding",
    "combine_tabular_fields",
]
