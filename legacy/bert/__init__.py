"""Legacy (v1) BERT fusion classes, frozen: see ``docs/layouts/fusion-layouts.md``.

``BERT_LEGACY_CLASS_PATHS`` maps the historical class paths (as a pickled
checkpoint or ``torch.save(model)`` would reference them) to these classes.
"""

from .bimodal_cross_attn import BimodalBertCrossAttn
from .bimodal_gate_fusion import BimodalBertGateFusion
from .bimodal_moe import BimodalBertMoE
from .text_bert import TextBertBase
from .trimodal_cross_attn import TrimodalCrossAttentionBert

_TRIMODAL = "athelas.models.lightning.trimodal.pl_trimodal_cross_attn.TrimodalCrossAttentionBert"

BERT_LEGACY_CLASS_PATHS = {
    "athelas.models.lightning.text.pl_bert.TextBertBase": TextBertBase,
    "athelas.models.lightning.bimodal.pl_bimodal_cross_attn.BimodalBertCrossAttn": BimodalBertCrossAttn,
    "athelas.models.lightning.bimodal.pl_bimodal_gate_fusion.BimodalBertGateFusion": BimodalBertGateFusion,
    "athelas.models.lightning.bimodal.pl_bimodal_moe.BimodalBertMoE": BimodalBertMoE,
    _TRIMODAL: TrimodalCrossAttentionBert,
}

__all__ = [
    "BERT_LEGACY_CLASS_PATHS",
    "BimodalBertCrossAttn",
    "BimodalBertGateFusion",
    "BimodalBertMoE",
    "TextBertBase",
    "TrimodalCrossAttentionBert",
]
