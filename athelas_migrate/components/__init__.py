"""Plain ``torch.nn.Module`` building blocks of the v2 (refactored) models.

To add a component: put it in the module of its kind (or a new module per component family), as a plain
``nn.Module`` that imports neither Lightning nor anything of the migration engine (tests/test_architecture.py),
and re-export it below; one that needs ``transformers`` goes into ``_BERT`` so that it loads lazily. Its
submodule and parameter names become state-dict keys of the target layout: once a checkpoint has been written
with them, renaming one is a new layout version with a rule file (docs/rules.md), not a code edit.
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
