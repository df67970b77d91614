"""Frozen legacy athelas Lightning classes, importable under their old names.

``LEGACY_CLASS_PATHS`` maps every historical class path (what a pickled module or a
checkpoint's provenance names) to the class here that reproduces it. To add a family
(e.g. the BERT classes in ``legacy/bert/``), import its classes below and extend the
dict with their historical paths.
"""

from .bimodal_cnn import BimodalCNN, MultimodalCNN
from .tab_ae import TabAE, TabularEmbeddingModule
from .text_cnn import TextCNN

LEGACY_CLASS_PATHS: dict[str, type] = {
    # v0: flat ``models/lightning/`` package, "multimodal" naming
    "athelas.models.lightning.pl_text_cnn.TextCNN": TextCNN,
    "athelas.models.lightning.pl_tab_ae.TabularEmbeddingModule": TabularEmbeddingModule,
    "athelas.models.lightning.pl_tab_ae.TabAE": TabAE,
    "athelas.models.lightning.pl_multimodal_cnn.MultimodalCNN": MultimodalCNN,
    # v1: per-modality folders, "bimodal" naming
    "athelas.models.lightning.text.pl_text_cnn.TextCNN": TextCNN,
    "athelas.models.lightning.tabular.pl_tab_ae.TabularEmbeddingModule": TabularEmbeddingModule,
    "athelas.models.lightning.tabular.pl_tab_ae.TabAE": TabAE,
    "athelas.models.lightning.bimodal.pl_bimodal_cnn.BimodalCNN": BimodalCNN,
}

_BERT_NAMES = ("TextBertBase", "BimodalBertCrossAttn", "BimodalBertGateFusion", "BimodalBertMoE",
               "TrimodalCrossAttentionBert", "BERT_LEGACY_CLASS_PATHS")


def __getattr__(name: str):
    """The BERT families load lazily: they need transformers, the CNN families do not."""
    if name in _BERT_NAMES:
        from . import bert

        return getattr(bert, name)
    raise AttributeError(name)


def all_class_paths() -> dict[str, type]:
    """Every historical class path, CNN and BERT families together."""
    from .bert import BERT_LEGACY_CLASS_PATHS

    return {**LEGACY_CLASS_PATHS, **BERT_LEGACY_CLASS_PATHS}


__all__ = [
    "LEGACY_CLASS_PATHS",
    "all_class_paths",
    *_BERT_NAMES,
    "BimodalCNN",
    "MultimodalCNN",
    "TabAE",
    "TabularEmbeddingModule",
    "TextCNN",
]
