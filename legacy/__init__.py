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

__all__ = [
    "LEGACY_CLASS_PATHS",
    "BimodalCNN",
    "MultimodalCNN",
    "TabAE",
    "TabularEmbeddingModule",
    "TextCNN",
]
