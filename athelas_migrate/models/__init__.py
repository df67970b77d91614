"""Refactored (v2) Lightning models.

One module per family; add new families (e.g. ``bert_*.py``) as separate
files and re-export them below. Importing this package only defines classes.
"""

from .base import AthelasModule
from .bimodal_cnn import BimodalCNN
from .config import CONFIG_DEFAULTS, resolve_config, text_batch_key
from .tab_ae import TabAE
from .text_cnn import TextCNN

_BERT = ["BimodalBertCrossAttn", "BimodalBertGateFusion", "BimodalBertMoE", "TrimodalCrossAttentionBert"]


def __getattr__(name: str):
    """BERT-based classes load lazily (they import transformers)."""
    if name in _BERT:
        from . import bert_fusion

        return getattr(bert_fusion, name)
    raise AttributeError(name)


__all__ = [
    *_BERT,
    "AthelasModule",
    "BimodalCNN",
    "CONFIG_DEFAULTS",
    "TabAE",
    "TextCNN",
    "resolve_config",
    "text_batch_key",
]
