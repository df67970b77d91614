"""The BERT fusion families: cross-attention, gate fusion, mixture of experts, trimodal (v1 -> v2).

Widths come from tensor shapes; the BERT architecture from shapes plus either a
user-supplied `bert_config` (transformers' config.json) or a table of standard
model names whose configuration must agree with the shapes. Nothing is downloaded.
Expected layouts are computed in pure Python (families/layout.py), so migrating never imports torch;
tests/test_layouts_vs_classes.py checks them against the real classes built on the meta device.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from ...errors import InputError, NotApplicableError, UsageError
from ...io.reader import RawCheckpoint
from ..base import Detection, Expected, Family, Needs, merge_config
from ..layout import LayoutBuilder
from .config import bert_shapes, resolve_bert_config

NO_DECAY = ("bias", "LayerNorm.weight")
#: The flat hyper-parameters the legacy fusion classes save, in their order (legacy/bert/_common.py's
#: SAVED_HPARAM_KEYS, copied so that a rollback never imports the legacy package; a test keeps them equal).
LEGACY_SAVED_HPARAMS = ("id_name", "text_name", "primary_text_name", "secondary_text_name", "text_input_ids_key",
                        "text_attention_mask_key", "tokenizer", "primary_tokenizer", "secondary_tokenizer",
                        "hidden_common_dim", "is_binary", "num_classes", "class_weights", "metric_choices", "lr",
                        "weight_decay", "adam_epsilon", "warmup_steps", "run_scheduler", "reinit_pooler",
                        "reinit_layers", "max_sen_len", "model_class", "model_path")
#: package of the legacy Lightning classes, as pickled whole modules name it
_LIGHTNING = "athelas.models.lightning."


def _historical(module: str, cls: str) -> dict[str, str]:
    """A fusion class's pickled path and its text encoder's, with the frozen classes reproducing them."""
    return {f"{_LIGHTNING}{module}.{cls}": f"legacy.bert:{cls}",
            f"{_LIGHTNING}text.pl_bert.TextBertBase": "legacy.bert:TextBertBase"}


#: Fusion values only training, evaluation or raw-text prediction read (see cnn.TRAINING_ONLY).
BERT_TRAINING_ONLY = {
    "optimizer_type": "training (optimizer)", "lr": "training (optimizer)", "weight_decay": "training (optimizer)",
    "adam_epsilon": "training (optimizer)", "warmup_steps": "training (scheduler)",
    "run_scheduler": "training (scheduler)", "reinit_pooler": "training (initialisation)",
    "reinit_layers": "training (initialisation)", "metric_choices": "evaluation (metrics)",
    "tokenizer": "prediction from raw text (tokenization)", "label_name": "training and evaluation (the label column)",
    "cross_attention_dropout": "training (dropout)", "fusion_dropout": "training (dropout)",
}


class _FusionFamily(Family):
    latest = "v2"
    marker = ""  # key prefix of the fusion block that identifies the family
    texts: tuple[str, ...] = ("text",)  # "text" or ("primary", "secondary")

    def _text_prefixes(self, version: str) -> dict[str, str]:
        tail = "encoder" if version == "v2" else "subnetwork"
        return {side: (f"{side}_text_{tail}." if side != "text" else f"text_{tail}.") for side in self.texts}

    def detect(self, raw: RawCheckpoint) -> Detection | None:
        keys = raw.state_dict
        if not any(k.startswith(self.marker) for k in keys):
            return None
        for version in ("v1", "v2"):
            pre = next(iter(self._text_prefixes(version).values()))
            if f"{pre}bert.embeddings.word_embeddings.weight" in keys:
                era = "refactored" if version == "v2" else "legacy"
                return Detection(self.name, version, [f"keys {self.marker}* (the {self.name} fusion block)",
                                                      f"keys {pre}bert.* ({era} text encoder)"], 3)
        return None

    # -- configuration -------------------------------------------------------------------------------
    def configure(self, raw: RawCheckpoint, version: str, overrides: dict[str, Any]) -> dict[str, Any]:
        notes: list[str] = []
        overrides = dict(overrides)  # never mutate the caller's dict: `bert_config` is taken out below
        sd, where = raw.state_dict, raw.path
        hp = raw.hyper_parameters or {}
        base = dict(hp["config"]) if version == "v2" and isinstance(hp.get("config"), dict) else \
            {k: v for k, v in hp.items() if not hasattr(v, "shape")}
        given_bert = overrides.pop("bert_config", None) or (hp.get("bert_config") if version == "v2" else None)
        tab_pre = "tab_encoder.embedding." if version == "v2" else "tab_subnetwork.embedding_layer."
        tab = sd.get(f"{tab_pre}0.weight")
        derived: dict[str, Any] = self.widths(sd, version, where)
        derived["num_classes"] = self.head(sd).shape[0]
        if derived["num_classes"] != 2:
            derived["is_binary"] = False
        config = merge_config(base, derived, overrides, where)
        config.update(overrides)
        needs = Needs()
        if tab is not None:
            fields = needs.ask(config, "tab_field_list", f"the names of the {tab.shape[0]} tabular input fields, in "
                               f"training order; the file stores only their count ({tab.shape[0]})",
                               [f"field{i + 1}" for i in range(tab.shape[0])])
            if fields is not None and len(fields) != tab.shape[0]:
                raise UsageError(f"tab_field_list has {len(fields)} names but the tabular weights take "
                                 f"{tab.shape[0]} inputs")
        elif config.get("tab_field_list"):
            raise NotApplicableError("tab_field_list is set but the checkpoint has no tabular branch", "tab_field_list")
        for key in self.text_name_keys():
            needs.ask(config, key, "the name of the text field, which forms the text batch keys", "dialogue")
        bare = raw.hyper_parameters is None
        if bare:
            for key, example in (("text_input_ids_key", "input_ids"), ("text_attention_mask_key", "attention_mask")):
                needs.ask(config, key, "forms the text batch keys; a bare state dict does not store it", example)
        self.fill_unrecoverable(config, notes)
        bert: dict[str, Any] = {}
        for side, pre in self._text_prefixes(version).items():
            facts = bert_shapes(sd, f"{pre}bert.", where)
            given = given_bert.get(side) if isinstance(given_bert, dict) and side in given_bert else given_bert
            tok = config.get(f"{side}_tokenizer") or config.get("tokenizer")
            bert[side] = resolve_bert_config(facts, given, tok, f"{pre}bert", notes, needs)
            if f"{pre}bert.embeddings.position_ids" in sd:
                config["bert_position_ids_saved"] = True
        config["_bert_config"] = bert["text"] if len(bert) == 1 else (
            bert["primary"] if bert["primary"] == bert["secondary"] else bert)
        known = {k: v for k, v in config.items() if v is not None}
        needs.raise_if_any(where, known, {"bert_config": config["_bert_config"]})
        from ...models.bert_fusion_config import resolve_bert_fusion_config

        resolved = resolve_bert_fusion_config({k: v for k, v in config.items() if not k.startswith("_")}, self.name)
        if bare:
            from ..cnn import record_unknown

            record_unknown(resolved, {k: why for k, why in BERT_TRAINING_ONLY.items() if k not in known}, notes)
        resolved["_bert_config"] = config["_bert_config"]
        resolved["_notes"] = notes
        return resolved

    def text_name_keys(self) -> tuple[str, ...]:
        """Config keys naming the text field(s); nothing in the weights tells them."""
        return ("text_name",)

    def widths(self, sd: dict, version: str, where: str) -> dict[str, Any]:
        pre = self._text_prefixes(version)["text"]
        head = sd.get(f"{pre}{'projection' if version == 'v2' else 'head_layer'}.1.weight")
        if head is None:
            raise InputError(f"{where}: missing the text head of {pre[:-1]}")
        return {"hidden_common_dim": head.shape[0]}

    def head(self, sd: dict) -> Any:
        raise NotImplementedError

    def fill_unrecoverable(self, config: dict, notes: list[str]) -> None:
        pass

    # -- layouts ---------------------------------------------------------------------------------------
    def expected(self, config: dict[str, Any], version: str) -> Expected:
        """The state dict of the `version` class for `config`, computed without torch (see families/layout.py)."""
        b = LayoutBuilder().buffer("class_weights_tensor", config["num_classes"])
        tab = len(config.get("tab_field_list") or [])
        bert = config.get("_bert_config") or {}
        legacy = version != "v2"
        if legacy and tab:
            _tab_layout(b, "tab_subnetwork.embedding_layer", tab, config["hidden_common_dim"])
        for side, pre in self._text_prefixes(version).items():
            side_bert = bert[side] if side in bert else bert
            b.bert(f"{pre}bert", side_bert)
            width = config["hidden_common_dim"] if side == "text" else config[f"{side}_hidden_common_dim"]
            b.linear(f"{pre}{'head_layer' if legacy else 'projection'}.1", width, side_bert["hidden_size"])
        self.fusion_layout(b, config, version, tab)
        b.buffer("loss_op.weight", config["num_classes"])
        expected = b.build()
        shapes, int_keys = expected.shapes, expected.int_keys
        if legacy and config.get("bert_position_ids_saved"):
            for pre in self._text_prefixes(version).values():
                key = f"{pre}bert.embeddings.position_ids"
                anchor = shapes[f"{pre}bert.embeddings.position_embeddings.weight"]
                shapes = _insert_after(shapes, f"{pre}bert.embeddings.word_embeddings.weight", key, (1, anchor[0]))
                int_keys.add(key)
        return Expected(shapes, expected.buffers | int_keys, int_keys)

    def fusion_layout(self, b: LayoutBuilder, config: dict[str, Any], version: str, tab: int) -> None:
        """The keys after the text encoder(s): the v2 tabular encoder, the fusion block and the head."""
        if version == "v2" and tab:
            _tab_layout(b, "tab_encoder.embedding", tab, config["hidden_common_dim"])
        self.fusion_block(b, config, config["hidden_common_dim"], config["hidden_common_dim"] if tab else 0)

    def fusion_block(self, b: LayoutBuilder, config: dict[str, Any], text_dim: int, tab_dim: int) -> None:
        raise NotImplementedError

    def render_hparams(self, config: dict[str, Any], version: str, state: OrderedDict) -> dict[str, Any]:
        clean = {k: v for k, v in config.items() if not k.startswith("_")}
        if version == "v2":
            return {"config": clean, "bert_config": config.get("_bert_config")}
        return {k: clean[k] for k in LEGACY_SAVED_HPARAMS if clean.get(k) is not None}

    def optimizer_groups(self, config: dict[str, Any], version: str, params: list[str],
                         n_groups: int) -> list[list[str]]:
        if n_groups != 2:
            return [params]
        return [[p for p in params if not any(nd in p for nd in NO_DECAY)],
                [p for p in params if any(nd in p for nd in NO_DECAY)]]


def _insert_after(shapes: OrderedDict, after: str, key: str, shape: tuple) -> OrderedDict:
    out: OrderedDict = OrderedDict()
    for k, v in shapes.items():
        out[k] = v
        if k == after:
            out[key] = shape
    return out


def _tab_layout(b: LayoutBuilder, prefix: str, fields: int, hidden: int) -> None:
    """`Sequential(LayerNorm(fields), Linear(fields, hidden), ReLU)`: the legacy TabAE and the v2 TabularEmbedding."""
    b.norm(f"{prefix}.0", fields).linear(f"{prefix}.1", hidden, fields)


def _divisor_heads(width: int, preferred: int) -> int:
    return preferred if width % preferred == 0 else 1


class CrossAttnFamily(_FusionFamily):
    name = "BimodalBertCrossAttn"
    marker = "cross_att."
    v2_class = "athelas_migrate.models.bert_fusion:BimodalBertCrossAttn"
    legacy_classes = {"v1": "legacy.bert:BimodalBertCrossAttn"}
    verify_adapter = "athelas_migrate.families.bert.verify:CrossAttnAdapter"
    onnx_spec = "athelas_migrate.families.bert.onnx:bimodal_bert_spec"
    historical_classes = _historical("bimodal.pl_bimodal_cross_attn", "BimodalBertCrossAttn")

    def head(self, sd: dict) -> Any:
        return sd["final_merge_network.2.weight"]

    def fusion_block(self, b: LayoutBuilder, config: dict[str, Any], text_dim: int, tab_dim: int) -> None:
        h = text_dim
        b.multihead_attention("cross_att.text2tab", h).multihead_attention("cross_att.tab2text", h)
        b.norm("cross_att.text_norm", h).norm("cross_att.tab_norm", h)
        b.linear("final_merge_network.0", h, 2 * h).linear("final_merge_network.2", config["num_classes"], h)

    def fill_unrecoverable(self, config: dict, notes: list[str]) -> None:
        if config.get("num_heads") is None:
            config["num_heads"] = _divisor_heads(config["hidden_common_dim"], 4)
            notes.append(f"num_heads is not recoverable and does not affect outputs (1-token attention); "
                         f"recorded as {config['num_heads']}")


class GateFamily(_FusionFamily):
    name = "BimodalBertGateFusion"
    marker = "gate_fusion."
    v2_class = "athelas_migrate.models.bert_fusion:BimodalBertGateFusion"
    legacy_classes = {"v1": "legacy.bert:BimodalBertGateFusion"}
    verify_adapter = "athelas_migrate.families.bert.verify:GateAdapter"
    onnx_spec = "athelas_migrate.families.bert.onnx:bimodal_bert_spec"
    historical_classes = _historical("bimodal.pl_bimodal_gate_fusion", "BimodalBertGateFusion")

    def head(self, sd: dict) -> Any:
        return sd["final_merge_network.1.weight"]

    def fusion_block(self, b: LayoutBuilder, config: dict[str, Any], text_dim: int, tab_dim: int) -> None:
        f = config["fusion_dim"]
        b.linear("gate_fusion.text_proj", f, text_dim).linear("gate_fusion.tab_proj", f, tab_dim)
        b.linear("gate_fusion.gate_net.0", f, 2 * f).norm("gate_fusion.gate_net.1", f)
        b.linear("final_merge_network.1", config["num_classes"], f)

    def widths(self, sd: dict, version: str, where: str) -> dict[str, Any]:
        return {**super().widths(sd, version, where), "fusion_dim": sd["gate_fusion.text_proj.weight"].shape[0]}


class MoEFamily(_FusionFamily):
    name = "BimodalBertMoE"
    marker = "moe_fusion."
    v2_class = "athelas_migrate.models.bert_fusion:BimodalBertMoE"
    legacy_classes = {"v1": "legacy.bert:BimodalBertMoE"}
    verify_adapter = "athelas_migrate.families.bert.verify:MoEAdapter"
    onnx_spec = "athelas_migrate.families.bert.onnx:bimodal_bert_spec"
    historical_classes = _historical("bimodal.pl_bimodal_moe", "BimodalBertMoE")

    def head(self, sd: dict) -> Any:
        return sd["classifier.1.weight"]

    def fusion_block(self, b: LayoutBuilder, config: dict[str, Any], text_dim: int, tab_dim: int) -> None:
        f = config["fusion_dim"]
        if text_dim != f:
            b.linear("moe_fusion.text_proj", f, text_dim)
        if tab_dim != f:
            b.linear("moe_fusion.tab_proj", f, tab_dim)
        b.linear("moe_fusion.router.0", 2, 2 * f).linear("classifier.1", config["num_classes"], f)

    def widths(self, sd: dict, version: str, where: str) -> dict[str, Any]:
        return {**super().widths(sd, version, where), "fusion_dim": sd["classifier.1.weight"].shape[1]}


class TrimodalFamily(_FusionFamily):
    name = "TrimodalCrossAttentionBert"
    marker = "cross_attention.attn_p2s."
    texts = ("primary", "secondary")
    v2_class = "athelas_migrate.models.bert_fusion:TrimodalCrossAttentionBert"
    legacy_classes = {"v1": "legacy.bert:TrimodalCrossAttentionBert"}
    verify_adapter = "athelas_migrate.families.bert.verify:TrimodalAdapter"
    onnx_spec = "athelas_migrate.families.bert.onnx:trimodal_bert_spec"
    historical_classes = _historical("trimodal.pl_trimodal_cross_attn", "TrimodalCrossAttentionBert")

    def text_name_keys(self) -> tuple[str, ...]:
        return ("primary_text_name", "secondary_text_name")

    def head(self, sd: dict) -> Any:
        return sd["final_merge_network.5.weight"]

    def fusion_layout(self, b: LayoutBuilder, config: dict[str, Any], version: str, tab: int) -> None:
        p, s = config["primary_hidden_common_dim"], config["secondary_hidden_common_dim"]
        d = max(p, s)
        if p < d:
            b.linear("primary_projection", d, p)
        if s < d:
            b.linear("secondary_projection", d, s)
        hidden = config["hidden_common_dim"]
        if version == "v2" and tab:
            _tab_layout(b, "tab_encoder.embedding", tab, hidden)
        ffn = "net." if version == "v2" else ""
        c = "cross_attention"
        b.multihead_attention(f"{c}.attn_p2s", d).multihead_attention(f"{c}.attn_s2p", d)
        b.norm(f"{c}.norm_primary", d).norm(f"{c}.norm_secondary", d)
        for side in ("primary", "secondary"):
            b.linear(f"{c}.ffn_{side}.{ffn}0", 4 * d, d).linear(f"{c}.ffn_{side}.{ffn}3", d, 4 * d)
        b.norm(f"{c}.norm_ffn_primary", d).norm(f"{c}.norm_ffn_secondary", d)
        total = 2 * d + (hidden if tab else 0)
        b.linear("final_merge_network.2", config["fusion_hidden_dim"], total)
        b.linear("final_merge_network.5", config["num_classes"], config["fusion_hidden_dim"])

    def widths(self, sd: dict, version: str, where: str) -> dict[str, Any]:
        head = "projection" if version == "v2" else "head_layer"
        out = {}
        for side, pre in self._text_prefixes(version).items():
            w = sd.get(f"{pre}{head}.1.weight")
            if w is None:
                raise InputError(f"{where}: missing the text head of {pre[:-1]}")
            out[f"{side}_hidden_common_dim"] = w.shape[0]
        out["fusion_hidden_dim"] = sd["final_merge_network.2.weight"].shape[0]
        return out

    def fill_unrecoverable(self, config: dict, notes: list[str]) -> None:
        if config.get("hidden_common_dim") is None:
            config["hidden_common_dim"] = config["primary_hidden_common_dim"]
        if config.get("cross_attention_heads") is None:
            d = max(config["primary_hidden_common_dim"], config["secondary_hidden_common_dim"])
            config["cross_attention_heads"] = _divisor_heads(d, 8)
            notes.append("cross_attention_heads is not recoverable and does not affect outputs (1-token "
                         f"attention); recorded as {config['cross_attention_heads']}")


#: What this module adds to the registry (athelas_migrate.families.FAMILIES).
FAMILIES: tuple[Family, ...] = (CrossAttnFamily(), GateFamily(), MoEFamily(), TrimodalFamily())
