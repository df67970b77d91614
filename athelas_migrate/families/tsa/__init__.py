"""TSA (temporal self-attention, single and dual sequence): recognised, explained, refused.

No exact migration exists (``next-families.md`` A.6, A.7): the refactored ``temporal/`` classes
cannot be built (and the dual module does not import at HEAD), and with their plumbing fixed they
compute a different function that no configuration selects. So these files are identified with
evidence (``inspect``) and every migration refuses with exit 3, writing nothing; the one-line
message points at ``--explain`` for the list of differences.

Generations: ``v1`` = the legacy Lightning ``athelas.models.lightning.tsa`` classes (``.ckpt``
or bare state dict); ``v0`` = the older script classes (``OrderFeatureAttentionClassifier``,
``TwoSeqMoEOrderFeatureAttentionClassifier``), recognised only.
"""

from __future__ import annotations

import re
from typing import Any

from ...errors import InputError
from ...io.reader import RawCheckpoint
from ..base import Detection, Family

#: why no exact migration exists (A.7), one line each, for `--explain`
DIFFERENCES = (
    "the refactored classes cannot be built: they pass the config dict positionally to blocks that take keyword "
    "arguments (TypeError at 76b182d and at HEAD); at HEAD the dual-sequence module does not even import "
    "(ImportError: WeightedEnsembleFusion)",
    "numbers: a per-feature embedding row times the value (legacy) vs one Linear(Nn -> E) over the numeric vector",
    "categories: one [V+2, E] table with a padding row shared by every block vs a [V, E] table per block, no "
    "padding row",
    "aggregation: two 6-layer MLPs (categories, numbers) concatenated to 2E vs one halving MLP over Nc+1 "
    "'features' giving E; the attention width is 2E vs E",
    "sequence summary: a learnable dummy token's final state vs concat(Linear1(first step), Linear2(last step)); "
    "no layer_norm_feature / layer_norm",
    "time: scores multiplied by exp((t_i - t_j) / 1e6) before the softmax vs a sinusoidal encoding added to keys "
    "and values",
    "mixture of experts: sparse top-2 with a random second expert and per-batch capacity, bias-free experts vs a "
    "dense softmax mixture of biased Linear experts",
    "feature block: feature tokens of the last event, pre-norm, zero query token vs time steps with FM features "
    "and time encoding",
    "head: legacy clf matches classifier.net.{0,3}, but the target inserts an extra fusion Linear (it would have "
    "to be the identity)",
    "only the head and, by shape alone, the feature-block attention/LayerNorm tensors have counterparts; nothing "
    "upstream of the head does",
)


class NoExactMigrationError(InputError):
    """The file is recognised, but no layout of this tool computes what it computes (exit 3)."""

    def __init__(self, message: str, explanation: tuple[str, ...] | list[str] = ()):
        super().__init__(message)
        self.explanation = list(explanation)


_LAYER = re.compile(r"(?:^|\.)layer_stack(?:_feature)?\.(\d+)\.")


def _has(keys: list[str], suffix: str) -> bool:
    return any(k == suffix or k.endswith("." + suffix) for k in keys)


class _TSAFamily(Family):
    latest = "v1"
    dual = False
    classes = {"v1": "", "v0": ""}

    def detect(self, raw: RawCheckpoint) -> Detection | None:
        keys = list(raw.state_dict)
        dual = _has(keys, "order_attention_cid.dummy_order") or _has(keys, "gate_emb_cid.dummy_order") or \
            _has(keys, "gate_emb.dummy_order") or _has(keys, "gate_score.0.weight")
        if dual != self.dual:
            return None
        order = [k for k in keys if k.endswith("dummy_order")]
        scripts = any(".layer_stack_feature." in k or "layer_norm_engineered" in k or "engineered_emb_tbl_bias" in k
                      for k in keys)
        feature = _has(keys, "feature_attention.layer_stack.0.multi_attn.in_proj_weight") or \
            any("layer_stack_feature.0.multi_attn.in_proj_weight" in k for k in keys)
        if not order or not feature:
            return None
        version = "v0" if scripts else "v1"
        moe = [k for k in keys if k.endswith("feedforward.gate.w_gating")]
        evidence = [f"keys {', '.join(order[:3])} (the learnable dummy token of the order-attention blocks)",
                    "feature-attention block " + ("layer_stack_feature.* (script generation)" if scripts
                                                  else "feature_attention.layer_stack.*")]
        if moe:
            experts = raw.state_dict[moe[0]].shape[-1]
            evidence.append(f"mixture of experts in {len(moe)} layers ({experts} experts, "
                            f"feedforward.gate.w_gating), which routes at random even in eval")
        else:
            evidence.append("dense feed-forward layers (no MoE gate)")
        layers = {k[: m.end()] for k in keys if (m := _LAYER.search(k))}
        evidence.append(f"{len(keys)} tensors, {len(layers)} attention layers; class {self.classes[version]}")
        return Detection(self.name, version, evidence, 5, [
            "no exact migration exists for TSA models: migrations refuse (run with --explain for why)"])

    def configure(self, raw: RawCheckpoint, version: str, overrides: dict[str, Any]) -> dict[str, Any]:
        gen = "legacy Lightning" if version == "v1" else "script"
        raise NoExactMigrationError(
            f"{raw.path}: a {gen} {self.name} (temporal self-attention) has no exact migration: the refactored "
            "temporal/ classes cannot be built and compute a different function (numbers, aggregation, time, "
            "mixture of experts, no dummy token); nothing was written (--explain lists the differences)",
            DIFFERENCES)

    def expected(self, config: dict[str, Any], version: str) -> Any:  # pragma: no cover - configure refuses
        raise NoExactMigrationError(f"{self.name}: no layout is modelled")

    def render_hparams(self, config: dict[str, Any], version: str, state: Any) -> dict[str, Any]:
        raise NoExactMigrationError(f"{self.name}: no layout is modelled")  # pragma: no cover


class TSASingleSeqFamily(_TSAFamily):
    name = "TSASingleSeq"
    classes = {"v1": "athelas.models.lightning.tsa.pl_tsa_single_seq.TSASingleSeq",
               "v0": "models.OrderFeatureAttentionClassifier"}


class TSADualSeqFamily(_TSAFamily):
    name = "TSADualSeq"
    dual = True
    classes = {"v1": "athelas.models.lightning.tsa.pl_tsa_dual_seq.TSADualSeq",
               "v0": "models.TwoSeqMoEOrderFeatureAttentionClassifier"}


#: What this module adds to the registry (athelas_migrate.families.FAMILIES).
FAMILIES: tuple[Family, ...] = (TSASingleSeqFamily(), TSADualSeqFamily())
