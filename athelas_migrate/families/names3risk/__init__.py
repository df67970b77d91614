"""The Names3Risk families: LSTM2Risk and Transformer2Risk (v1 bare state dicts -> v2 Lightning).

v1 files hold no hyper-parameters at all (``torch.save(model.state_dict())``). Sizes come from
shapes (``next-families.md`` B.5); the ordered tabular field names and the text name cannot:
the file stores only the field count, and the legacy training script picked the column order
from a Python set, so any guess would be silently wrong. Detection is exact: the key set must
be the one the real class has for the sizes the shapes say, so no other family's file is claimed.
Expected layouts are read off the real classes built on the meta device.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

from ...errors import MissingInformationError, UsageError
from ...io.reader import RawCheckpoint
from ..base import Detection, Expected, Family, merge_config
from ..layout import LayoutBuilder

_NOT_STORED = ("text_name", "tab_field_list")
_PREFIX = {"v1": ("text_projection.", "token_embedding_table", "tab_projection.", "net.12."),
           "v2": ("text_encoder.", "token_embedding", "tab_encoder.", "classifier.12.")}


def _count(sd: dict, pattern: str) -> int:
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in sd if (m := rx.fullmatch(k))}
    if found != set(range(len(found))):
        raise ValueError(f"indices of {pattern} are not 0..n-1")
    return len(found)


class _Names3RiskFamily(Family):
    latest = "v2"
    bare_versions = ("v1",)  # rollback writes what the legacy script wrote: a bare state dict
    hparams_name = {"v2": "config"}  # the v2 class calls save_hyperparameters(config)
    marker: dict[str, str] = {}

    def sizes(self, sd: dict, version: str) -> dict[str, Any]:
        text, token, tab, head = _PREFIX[version]
        n_embed, width = sd[f"{text}{token}.weight"].shape
        rows = sd[f"{head}weight"].shape[0]
        sizes = {"n_embed": int(n_embed), "embedding_size": int(width),
                 "input_tab_dim": int(sd[f"{tab}0.weight"].shape[0]),
                 "num_classes": 2 if version == "v1" else int(rows)}
        if version == "v1" and rows != 1:
            raise ValueError(f"a legacy head has one output, {head}weight has {rows}")
        return {**sizes, **self.text_sizes(sd, text, version)}

    def text_sizes(self, sd: dict, text: str, version: str) -> dict[str, Any]:
        raise NotImplementedError

    def detect(self, raw: RawCheckpoint) -> Detection | None:
        sd = raw.state_dict
        for version, marker in self.marker.items():
            if marker not in sd:
                continue
            try:
                sizes = self.sizes(sd, version)
                exp = self.expected({**sizes, "tab_field_list": [f"f{i}" for i in range(sizes["input_tab_dim"])],
                                     "is_binary": sizes["num_classes"] == 2}, version)
            except (KeyError, ValueError, IndexError, TypeError, RuntimeError):
                return None
            if set(exp.shapes) != set(sd):
                return None
            what = "legacy plain nn.Module state dict" if version == "v1" else "refactored Lightning layout"
            return Detection(self.name, version, [f"key {marker} ({what})",
                                                  f"exactly the {len(sd)} keys of a {self.name} {version} with "
                                                  f"these sizes"], 5)
        return None

    def configure(self, raw: RawCheckpoint, version: str, overrides: dict[str, Any]) -> dict[str, Any]:
        sd, where = raw.state_dict, raw.path
        hp = raw.hyper_parameters or {}
        base = dict(hp.get("config", hp)) if version == "v2" and isinstance(hp, dict) else {}
        base = {k: v for k, v in base.items() if not hasattr(v, "shape")}
        derived = self.sizes(sd, version)
        if version == "v1":
            derived["is_binary"] = True
        config = merge_config(base, derived, overrides, where)
        missing = [k for k in _NOT_STORED if config.get(k) in (None, "", [])]
        n = derived["input_tab_dim"]
        if missing:
            raise MissingInformationError(
                f"{where}: a {self.name} {version} file stores neither the text name nor the tabular field names "
                f"(only their count, {n}; the legacy script took the column order from a Python set, so no order "
                f"can be guessed); pass both: --set text_name=NAME --set 'tab_field_list=[\"f1\", ...]' "
                f"({n} names, in training order) or --config FILE.json (missing: {', '.join(missing)})")
        fields = config["tab_field_list"]
        if isinstance(fields, str) or len(fields) != n:
            raise UsageError(f"tab_field_list has {1 if isinstance(fields, str) else len(fields)} names but the "
                             f"tabular weights take {n} inputs")
        from ...models.names3risk_config import resolve_names3risk_config

        try:
            config = resolve_names3risk_config(config, self.name)
        except ValueError as exc:
            raise UsageError(f"{where}: {exc}") from exc
        if version == "v1" and any(float(w) != 1.0 for w in config["class_weights"]):
            raise UsageError(f"class_weights={config['class_weights']}: the legacy model trained with unweighted "
                             "BCE, so the migrated loss weights are ones; change them when fine-tuning the v2 model")
        notes = []
        if version == "v1" and "dropout_rate" not in overrides:
            notes.append(f"dropout_rate is not recoverable (no effect in eval); recorded as {config['dropout_rate']}")
        config["_notes"] = notes
        return config

    def expected(self, config: dict[str, Any], version: str) -> Expected:
        """The state dict of the `version` class for `config`, computed without torch (see families/layout.py)."""
        legacy = version != "v2"
        h, n, classes = config["hidden_size"], config["input_tab_dim"], config["num_classes"]
        b = LayoutBuilder()
        if not legacy:
            b.buffer("class_weights_tensor", classes)
        self.text_layout(b, "text_projection" if legacy else "text_encoder", config, legacy)
        tab = "tab_projection" if legacy else "tab_encoder"
        b.batch_norm(f"{tab}.0", n).linear(f"{tab}.1", 2 * h, n)
        b.linear(f"{tab}.4", 2 * h, 2 * h).norm(f"{tab}.5", 2 * h)
        self.head_layout(b, "net" if legacy else "classifier", h, 1 if legacy else classes, legacy)
        if not legacy:
            b.buffer("loss_fn.weight", classes)
        return b.build()

    def text_layout(self, b: LayoutBuilder, pre: str, config: dict[str, Any], legacy: bool) -> None:
        raise NotImplementedError

    def head_layout(self, b: LayoutBuilder, pre: str, h: int, outputs: int, legacy: bool) -> None:
        raise NotImplementedError

    def render_hparams(self, config: dict[str, Any], version: str, state: OrderedDict) -> dict[str, Any]:
        return {k: v for k, v in config.items() if not k.startswith("_")} if version == "v2" else {}


class LSTM2RiskFamily(_Names3RiskFamily):
    name = "LSTM2Risk"
    marker = {"v1": "text_projection.lstm.weight_ih_l0", "v2": "text_encoder.lstm.weight_ih_l0"}
    v2_class = "athelas_migrate.models.names3risk:LSTM2Risk"
    legacy_classes = {"v1": "legacy.names3risk:LSTM2Risk"}
    verify_adapter = "athelas_migrate.families.names3risk.verify:LSTM2RiskAdapter"
    onnx_spec = "athelas_migrate.families.names3risk.onnx:names3risk_spec"

    def text_layout(self, b: LayoutBuilder, pre: str, config: dict[str, Any], legacy: bool) -> None:
        h, e = config["hidden_size"], config["embedding_size"]
        b.embedding(f"{pre}.{'token_embedding_table' if legacy else 'token_embedding'}", config["n_embed"], e)
        b.lstm(f"{pre}.lstm", e, h, config["n_lstm_layers"], bidirectional=True)
        b.linear(f"{pre}.{'lstm_pooling' if legacy else 'pooling'}.attention", 1, 2 * h)
        b.norm(f"{pre}.{'lstm_norm' if legacy else 'norm'}", 2 * h)

    def head_layout(self, b: LayoutBuilder, pre: str, h: int, outputs: int, legacy: bool) -> None:
        w = 4 * h
        for i in (0, 3, 6):
            block = f"{pre}.{i}.ffwd" if legacy else f"{pre}.{i}"
            b.norm(f"{block}.0" if legacy else f"{block}.norm", w)
            b.linear(f"{block}.1" if legacy else f"{block}.ffn.0", 4 * w, w)
            b.linear(f"{block}.3" if legacy else f"{block}.ffn.2", w, 4 * w)
        b.linear(f"{pre}.9", h, w).linear(f"{pre}.12", outputs, h)

    def text_sizes(self, sd: dict, text: str, version: str) -> dict[str, Any]:
        return {"hidden_size": int(sd[f"{text}lstm.weight_hh_l0"].shape[1]),
                "n_lstm_layers": _count(sd, re.escape(f"{text}lstm.weight_ih_l") + r"(\d+)")}


class Transformer2RiskFamily(_Names3RiskFamily):
    name = "Transformer2Risk"
    marker = {"v1": "text_projection.blocks.0.sa.heads.0.qkv.weight",
              "v2": "text_encoder.blocks.0.self_attn.heads.0.qkv.weight"}
    v2_class = "athelas_migrate.models.names3risk:Transformer2Risk"
    legacy_classes = {"v1": "legacy.names3risk:Transformer2Risk"}
    verify_adapter = "athelas_migrate.families.names3risk.verify:Transformer2RiskAdapter"
    onnx_spec = "athelas_migrate.families.names3risk.onnx:names3risk_spec"

    def text_layout(self, b: LayoutBuilder, pre: str, config: dict[str, Any], legacy: bool) -> None:
        h, e, heads = config["hidden_size"], config["embedding_size"], config["n_heads"]
        b.embedding(f"{pre}.{'token_embedding_table' if legacy else 'token_embedding'}", config["n_embed"], e)
        b.embedding(f"{pre}.{'position_embedding_table' if legacy else 'position_embedding'}", config["max_sen_len"], e)
        for i in range(config["n_blocks"]):
            block = f"{pre}.blocks.{i}"
            attn = f"{block}.{'sa' if legacy else 'self_attn'}"
            ffn = f"{block}.{'ffwd' if legacy else 'ffn'}.net"
            if not legacy:
                b.norm(f"{block}.ln1", e)
            for j in range(heads):
                b.param(f"{attn}.heads.{j}.qkv.weight", 3 * (e // heads), e)
            b.linear(f"{attn}.proj", e, e)
            if not legacy:
                b.norm(f"{block}.ln2", e)
            b.linear(f"{ffn}.0", 4 * e, e).linear(f"{ffn}.3", e, 4 * e)
            if legacy:
                b.norm(f"{block}.ln1", e).norm(f"{block}.ln2", e)
        if legacy:
            b.linear(f"{pre}.tab_layer", h, config["input_tab_dim"])
        b.linear(f"{pre}.{'attention_pooling' if legacy else 'pooling'}.attention", 1, e)
        b.linear(f"{pre}.proj", 2 * h, e)

    def head_layout(self, b: LayoutBuilder, pre: str, h: int, outputs: int, legacy: bool) -> None:
        w = 4 * h
        for i in (0, 3, 6, 9):
            block = f"{pre}.{i}.net" if legacy else f"{pre}.{i}.ffn"
            b.linear(f"{block}.0", w, w).linear(f"{block}.2", w, w)
        b.linear(f"{pre}.12", outputs, w)

    def text_sizes(self, sd: dict, text: str, version: str) -> dict[str, Any]:
        attn = "sa" if version == "v1" else "self_attn"
        pos = "position_embedding_table" if version == "v1" else "position_embedding"
        heads = _count(sd, re.escape(f"{text}blocks.0.{attn}.heads.") + r"(\d+)\.qkv\.weight")
        width = sd[f"{text}{pos}.weight"].shape[1]
        qkv = sd[f"{text}blocks.0.{attn}.heads.0.qkv.weight"].shape[0]
        if heads == 0 or width % heads or qkv != 3 * width // heads:
            raise ValueError("qkv rows do not agree with the head count")
        return {"max_sen_len": int(sd[f"{text}{pos}.weight"].shape[0]),
                "n_blocks": _count(sd, re.escape(f"{text}blocks.") + r"(\d+)\.ln1\.weight"),
                "n_heads": heads, "hidden_size": int(sd[f"{text}proj.weight"].shape[0]) // 2}


#: What this module adds to the registry (athelas_migrate.families.FAMILIES).
FAMILIES: tuple[Family, ...] = (LSTM2RiskFamily(), Transformer2RiskFamily())
