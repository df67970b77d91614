"""The CNN families: TextCNN, TabAE and BimodalCNN (v0 MultimodalCNN, v1, v2 components).

Facts from docs/layouts/legacy-layouts.md and target-layout.md: key layouts are
computed from the config here, and tests check them against the real classes.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from ...errors import InputError, NotApplicableError, UnknownLayoutError, UsageError
from ...io.reader import RawCheckpoint
from ..base import Detection, Expected, Family, Needs, merge_config
from .text import text_expected, text_shapes

V1_BIMODAL_WHITELIST = [
    "text_name", "text_input_ids_key", "is_binary", "num_classes", "kernel_size", "num_layers", "num_channels",
    "hidden_common_dim", "dropout_keep", "max_sen_len", "is_embeddings_trainable", "class_weights", "lr",
    "weight_decay", "adam_epsilon", "metric_choices", "model_class", "embed_size", "tokenizer",
]
V2_ONLY_KEYS = ("text_batch_key", "vocab_size")

#: package of the legacy Lightning classes, as pickled whole modules name it
_LIGHTNING = "athelas.models.lightning."


def _float_values(t) -> list[float]:
    import numpy as np

    return [float(x) for x in np.frombuffer(bytes(t.raw_bytes()), dtype=np.dtype(t.dtype))]


def _base_config(raw: RawCheckpoint) -> dict[str, Any]:
    hp = raw.hyper_parameters or {}
    if isinstance(hp.get("config"), dict):
        base = dict(hp["config"])
        for k in ("vocab_size", "embed_size"):
            if k in hp and not hasattr(hp[k], "shape"):
                base[k] = hp[k]
        return base
    return {k: v for k, v in hp.items() if not hasattr(v, "shape")}


def _optimizer_evidence(raw: RawCheckpoint, config: dict, notes: list[str]) -> None:
    """v1 BimodalCNN checkpoints lack optimizer_type/momentum; the optimizer state says which it was."""
    states = raw.top.get("optimizer_states") or []
    if config.get("optimizer_type") or not states or not isinstance(states[0], dict):
        return
    groups = states[0].get("param_groups") or [{}]
    group = groups[0] if isinstance(groups[0], dict) else {}
    if "betas" in group:
        config["optimizer_type"] = "Adam"
        notes.append("optimizer_type=Adam read off the optimizer state (param group has betas)")
    elif "momentum" in group:
        config["optimizer_type"] = "SGD"
        config.setdefault("momentum", group["momentum"])
        notes.append(f"optimizer_type=SGD, momentum={group['momentum']} read off the optimizer state")


def _class_weights(raw: RawCheckpoint, config: dict, notes: list[str]) -> None:
    if config.get("class_weights") is None and "class_weights_tensor" in raw.state_dict:
        config["class_weights"] = _float_values(raw.state_dict["class_weights_tensor"])
        notes.append("class_weights read off class_weights_tensor")


#: Values that only training, evaluation or raw-text prediction read, and what reads them. Absent from a file
#: that stores no config, they are recorded as unknown (None) rather than a default presented as fact.
TRAINING_ONLY = {
    "dropout_keep": "training (dropout)", "is_embeddings_trainable": "training (embedding updates)",
    "optimizer_type": "training (optimizer)", "lr": "training (optimizer)", "momentum": "training (optimizer)",
    "weight_decay": "training (optimizer)", "adam_epsilon": "training (optimizer)",
    "metric_choices": "evaluation (metrics)", "tokenizer": "prediction from raw text (tokenization)",
    "label_name": "training and evaluation (the label column)",
}


def record_unknown(config: dict, unknown: dict[str, str], notes: list[str]) -> None:
    """Mark keys the file does not hold for the written hyper-parameters (None there, listed under `unknown`).

    Args:
        config: the config being built.
        unknown: key -> what reads it (see TRAINING_ONLY).
        notes: the migration's notes, which say so.
    """
    if unknown:
        config["_unknown"] = dict(unknown)
        notes.append("not in the file, recorded as unknown (supply them before training): " + ", ".join(
            f"{k} ({why})" for k, why in unknown.items()))


def _resolve(config: dict, where: str = "checkpoint") -> dict:
    from ...io.values import check_hparam_types
    from ...models.config import resolve_config  # pure Python, no torch

    check_hparam_types(config, "hyper-parameters", where)  # merged from the checkpoint, --set and derived facts
    return resolve_config(config)


class _CNNFamily(Family):
    latest = "v2"
    pickled_paths: dict[str, str] = {}

    def _version_from_classpath(self, raw: RawCheckpoint) -> str | None:
        if raw.kind == "pickled_module":
            return self.pickled_paths.get(raw.module_classpath or "")
        return None

    def finish(self, raw: RawCheckpoint, version: str, config: dict, overrides: dict, notes: list[str],
               needs: Needs) -> dict:
        """Resolve the config. A Lightning file's missing keys took the legacy defaults when it was trained, so
        the defaults are facts there; a bare state dict stores no config at all, so what changes outputs or
        inputs is asked for (`needs`) and what only training uses is recorded as unknown, never guessed."""
        _optimizer_evidence(raw, config, notes)
        _class_weights(raw, config, notes)
        config.update(overrides)
        bare = raw.hyper_parameters is None
        if bare:
            needs.ask(config, "max_sen_len", "the text length the legacy model was trained for (its pooling "
                      "window is sized for exactly this length); a bare state dict does not store it", 40)
            if not config.get("text_batch_key"):
                needs.ask(config, "text_input_ids_key", "forms the text batch key {text_name}_{text_input_ids_key};"
                          " a bare state dict does not store it", "input_ids")
        known = {k for k, v in config.items() if v is not None}
        resolved = _resolve(config, raw.path)
        resolved["_known"] = known
        if bare:
            record_unknown(resolved, {k: why for k, why in TRAINING_ONLY.items() if k not in known}, notes)
        return resolved


class TextCNNFamily(_CNNFamily):
    name = "TextCNN"
    v2_class = "athelas_migrate.models:TextCNN"
    legacy_classes = {"v0": "legacy:TextCNN", "v1": "legacy:TextCNN"}
    verify_adapter = "athelas_migrate.families.cnn.verify:TextCNNAdapter"
    onnx_spec = "athelas_migrate.families.cnn.onnx:text_cnn_spec"
    historical_classes = {f"{_LIGHTNING}pl_text_cnn.TextCNN": "legacy:TextCNN",
                          f"{_LIGHTNING}text.pl_text_cnn.TextCNN": "legacy:TextCNN"}
    pickled_paths = {"athelas.models.lightning.pl_text_cnn.TextCNN": "v0",
                     "athelas.models.lightning.text.pl_text_cnn.TextCNN": "v1"}

    def detect(self, raw: RawCheckpoint) -> Detection | None:
        sd = raw.state_dict
        if "embeddings.weight" in sd and "network.1.weight" in sd:
            version = self._version_from_classpath(raw)
            if version:
                return Detection(self.name, version, [f"pickled class {raw.module_classpath}"], 3)
            return Detection(self.name, "v1", ["keys embeddings.weight, convs.*, network.1.* (legacy TextCNN)"], 2,
                             ["v0 and v1 TextCNN files are identical apart from the class path; treated as v1"])
        if "text_encoder.embeddings.weight" in sd and not any(k.startswith(("fusion.", "tab_encoder.")) for k in sd):
            return Detection(self.name, "v2", ["keys text_encoder.* without fusion.* (refactored TextCNN)"], 2)
        return None

    def configure(self, raw: RawCheckpoint, version: str, overrides: dict[str, Any]) -> dict[str, Any]:
        notes: list[str] = []
        prefix = "text_encoder." if version == "v2" else ""
        derived = text_shapes(raw.state_dict, prefix, raw.path)
        derived["num_classes"] = raw.state_dict["class_weights_tensor"].shape[0] if "class_weights_tensor" in \
            raw.state_dict else derived["hidden_common_dim"]
        config = merge_config(_base_config(raw), derived, overrides, raw.path)
        if overrides.get("tab_field_list"):  # recorded, it would describe inputs this model never reads
            raise NotApplicableError("tab_field_list is set but a TextCNN has no tabular branch", "tab_field_list")
        needs = Needs()
        if not config.get("text_batch_key"):
            needs.ask(config, "text_name", "the name of the text field, which forms the text batch key", "dialogue")
        config = self.finish(raw, version, config, overrides, notes, needs)
        needs.raise_if_any(raw.path, {k: config[k] for k in config.pop("_known")})
        config["_notes"] = notes
        return config

    def expected(self, config: dict[str, Any], version: str) -> Expected:
        shapes: OrderedDict[str, tuple] = OrderedDict(class_weights_tensor=(config["num_classes"],))
        text_expected(config, "text_encoder." if version == "v2" else "",
                      "projection" if version == "v2" else "network", shapes)
        shapes["loss_op.weight"] = (config["num_classes"],)
        return Expected(shapes, {"class_weights_tensor", "loss_op.weight"})

    def render_hparams(self, config: dict[str, Any], version: str, state: OrderedDict) -> dict[str, Any]:
        return _render_text_model(config, version, state, "embeddings.weight")


def _render_text_model(config: dict, version: str, state: OrderedDict, emb_key: str) -> dict[str, Any]:
    clean = {k: v for k, v in config.items() if not k.startswith("_")}
    if version == "v2":
        cfg = {k: v for k, v in clean.items() if k not in ("vocab_size",)}
        return {"config": cfg, "vocab_size": clean["vocab_size"], "embed_size": clean["embed_size"]}
    cfg = {k: v for k, v in clean.items() if k not in V2_ONLY_KEYS}
    return {"config": cfg, "vocab_size": clean["vocab_size"], "word_embeddings": state[emb_key]}


class TabAEFamily(_CNNFamily):
    name = "TabAE"
    v2_class = "athelas_migrate.models:TabAE"
    legacy_classes = {"v0": "legacy:TabAE", "v1": "legacy:TabAE"}
    verify_adapter = "athelas_migrate.families.cnn.verify:TabAEAdapter"
    onnx_spec = "athelas_migrate.families.cnn.onnx:tab_ae_spec"
    historical_classes = {f"{_LIGHTNING}pl_tab_ae.TabularEmbeddingModule": "legacy:TabularEmbeddingModule",
                          f"{_LIGHTNING}pl_tab_ae.TabAE": "legacy:TabAE",
                          f"{_LIGHTNING}tabular.pl_tab_ae.TabularEmbeddingModule": "legacy:TabularEmbeddingModule",
                          f"{_LIGHTNING}tabular.pl_tab_ae.TabAE": "legacy:TabAE"}
    pickled_paths = {"athelas.models.lightning.pl_tab_ae.TabAE": "v0",
                     "athelas.models.lightning.tabular.pl_tab_ae.TabAE": "v1"}

    def detect(self, raw: RawCheckpoint) -> Detection | None:
        keys = set(raw.state_dict)
        if "embedding_layer.0.running_mean" in keys:
            raise UnknownLayoutError(
                f"{raw.path}: a TabAE with BatchNorm1d (embedding_layer.0.running_mean) is not a released "
                "layout (only an old design note describes it); refusing to guess a mapping")
        if keys and all(k.startswith("embedding_layer.") for k in keys):
            version = self._version_from_classpath(raw)
            if version:
                return Detection(self.name, version, [f"pickled class {raw.module_classpath}"], 3)
            return Detection(self.name, "v1", ["keys embedding_layer.{0,1}.* only (legacy TabAE)"], 2,
                             ["v0 and v1 TabAE files are identical apart from the class path; treated as v1"])
        if keys and all(k.startswith("embedding.embedding.") for k in keys):
            return Detection(self.name, "v2", ["keys embedding.embedding.* only (refactored TabAE)"], 2)
        return None

    def configure(self, raw: RawCheckpoint, version: str, overrides: dict[str, Any]) -> dict[str, Any]:
        prefix = "embedding.embedding." if version == "v2" else "embedding_layer."
        w = raw.state_dict.get(f"{prefix}1.weight")
        if w is None or len(w.shape) != 2:
            raise InputError(f"{raw.path}: missing or malformed {prefix}1.weight")
        derived = {"hidden_common_dim": w.shape[0], "input_tab_dim": w.shape[1]}
        config = merge_config(_base_config(raw), derived, overrides, raw.path)
        config.update(overrides)
        needs = Needs()
        fields = needs.ask(config, "tab_field_list", f"the names of the {w.shape[1]} tabular input fields, in "
                           f"training order; the file stores only their count ({w.shape[1]})",
                           [f"field{i + 1}" for i in range(w.shape[1])])
        needs.raise_if_any(raw.path, config)
        if len(fields) != w.shape[1]:
            raise UsageError(f"tab_field_list has {len(fields)} names but the weights take {w.shape[1]} inputs")
        config.setdefault("is_binary", True)
        config.setdefault("num_classes", 2)
        config["_notes"] = []
        return config

    def expected(self, config: dict[str, Any], version: str) -> Expected:
        D, H = config["input_tab_dim"], config["hidden_common_dim"]
        p = "embedding.embedding." if version == "v2" else "embedding_layer."
        shapes = OrderedDict([(f"{p}0.weight", (D,)), (f"{p}0.bias", (D,)), (f"{p}1.weight", (H, D)),
                              (f"{p}1.bias", (H,))])
        return Expected(shapes, set())

    def render_hparams(self, config: dict[str, Any], version: str, state: OrderedDict) -> dict[str, Any]:
        clean = {k: v for k, v in config.items() if not k.startswith("_")}
        if version == "v2":
            return {"config": clean}
        return {k: clean[k] for k in ("tab_field_list", "hidden_common_dim", "is_binary", "num_classes",
                                      "input_tab_dim") if k in clean}


class BimodalCNNFamily(_CNNFamily):
    name = "BimodalCNN"
    v2_class = "athelas_migrate.models:BimodalCNN"
    legacy_classes = {"v0": "legacy:MultimodalCNN", "v1": "legacy:BimodalCNN"}
    verify_adapter = "athelas_migrate.families.cnn.verify:BimodalCNNAdapter"
    onnx_spec = "athelas_migrate.families.cnn.onnx:bimodal_cnn_spec"
    historical_classes = {f"{_LIGHTNING}pl_multimodal_cnn.MultimodalCNN": "legacy:MultimodalCNN",
                          f"{_LIGHTNING}bimodal.pl_bimodal_cnn.BimodalCNN": "legacy:BimodalCNN"}
    pickled_paths = {"athelas.models.lightning.pl_multimodal_cnn.MultimodalCNN": "v0",
                     "athelas.models.lightning.bimodal.pl_bimodal_cnn.BimodalCNN": "v1"}

    def detect(self, raw: RawCheckpoint) -> Detection | None:
        sd = raw.state_dict
        if "text_subnetwork.embeddings.weight" in sd and "final_merge_network.1.weight" in sd:
            version = self._version_from_classpath(raw)
            if version:
                return Detection(self.name, version, [f"pickled class {raw.module_classpath}"], 3)
            hp = raw.hyper_parameters
            if hp is None:
                return Detection(self.name, "v1", ["keys text_subnetwork.*, final_merge_network.* (legacy)"], 2,
                                 ["a bare state dict: v0 and v1 state dicts are identical; treated as v1"])
            if isinstance(hp.get("config"), dict) or "word_embeddings" in hp:
                mc = (hp.get("config") or {}).get("model_class")
                return Detection(self.name, "v0", ["keys text_subnetwork.*, final_merge_network.*",
                                                   "hyper_parameters nest 'config' and carry 'word_embeddings' (v0)",
                                                   *([f"model_class={mc!r}"] if mc else [])], 3)
            mc = hp.get("model_class")
            return Detection(self.name, "v1", ["keys text_subnetwork.*, final_merge_network.*",
                                               "flat whitelisted hyper_parameters (v1)",
                                               *([f"model_class={mc!r}"] if mc else [])], 3)
        if "text_encoder.embeddings.weight" in sd and "fusion.fusion.1.weight" in sd:
            return Detection(self.name, "v2", ["keys text_encoder.*, fusion.fusion.1.* (refactored BimodalCNN)"], 2)
        return None

    def configure(self, raw: RawCheckpoint, version: str, overrides: dict[str, Any]) -> dict[str, Any]:
        notes: list[str] = []
        sd = raw.state_dict
        v2 = version == "v2"
        derived = text_shapes(sd, "text_encoder." if v2 else "text_subnetwork.", raw.path)
        head = sd.get("fusion.fusion.1.weight" if v2 else "final_merge_network.1.weight")
        derived["num_classes"] = head.shape[0]
        if derived["num_classes"] != 2:
            derived["is_binary"] = False
        tab = sd.get("tab_encoder.embedding.1.weight" if v2 else "tab_subnetwork.embedding_layer.1.weight")
        tab_width = tab.shape[1] if tab is not None else 0
        config = merge_config(_base_config(raw), derived, overrides, raw.path)
        needs = Needs()
        if not config.get("text_batch_key"):
            needs.ask(config, "text_name", "the name of the text field, which forms the text batch key", "dialogue")
        config = self.finish(raw, version, config, overrides, notes, needs)
        known = {k: config[k] for k in config.pop("_known")}
        if tab_width:
            fields = needs.ask(config, "tab_field_list", f"the names of the {tab_width} tabular input fields, in "
                               f"training order; the file stores only their count ({tab_width})",
                               [f"field{i + 1}" for i in range(tab_width)])
            if fields is not None and len(fields) != tab_width:
                raise UsageError(f"tab_field_list has {len(fields)} names but the tabular weights take "
                                 f"{tab_width} inputs")
        elif config.get("tab_field_list"):
            raise NotApplicableError("tab_field_list is set but the checkpoint has no tabular branch", "tab_field_list")
        needs.raise_if_any(raw.path, known)
        if head.shape[1] != config["hidden_common_dim"] + (config["hidden_common_dim"] if tab_width else 0):
            raise InputError(f"{raw.path}: fusion weight {list(head.shape)} does not fit the encoder widths")
        config["_notes"] = notes
        return config

    def expected(self, config: dict[str, Any], version: str) -> Expected:
        nc, H = config["num_classes"], config["hidden_common_dim"]
        tab = bool(config.get("tab_field_list"))
        D = len(config["tab_field_list"]) if tab else 0
        shapes: OrderedDict[str, tuple] = OrderedDict(class_weights_tensor=(nc,))
        buffers = {"class_weights_tensor", "loss_op.weight"}
        if version == "v2":
            text_expected(config, "text_encoder.", "projection", shapes)
            if tab:
                shapes.update([("tab_encoder.embedding.0.weight", (D,)), ("tab_encoder.embedding.0.bias", (D,)),
                               ("tab_encoder.embedding.1.weight", (H, D)), ("tab_encoder.embedding.1.bias", (H,))])
            head = "fusion.fusion.1"
        else:
            shapes["text_subnetwork.class_weights_tensor"] = (nc,)
            text_expected(config, "text_subnetwork.", "network", shapes)
            shapes["text_subnetwork.loss_op.weight"] = (nc,)
            buffers |= {"text_subnetwork.class_weights_tensor", "text_subnetwork.loss_op.weight"}
            if tab:
                p = "tab_subnetwork.embedding_layer."
                shapes.update([(f"{p}0.weight", (D,)), (f"{p}0.bias", (D,)), (f"{p}1.weight", (H, D)),
                               (f"{p}1.bias", (H,))])
            head = "final_merge_network.1"
        shapes[f"{head}.weight"] = (nc, H + (H if tab else 0))
        shapes[f"{head}.bias"] = (nc,)
        shapes["loss_op.weight"] = (nc,)
        return Expected(shapes, buffers)

    def render_hparams(self, config: dict[str, Any], version: str, state: OrderedDict) -> dict[str, Any]:
        if version == "v1":
            return {k: config[k] for k in V1_BIMODAL_WHITELIST if k in config}
        return _render_text_model(config, version, state, "text_subnetwork.embeddings.weight")



FAMILIES: tuple[Family, ...] = (BimodalCNNFamily(), TextCNNFamily(), TabAEFamily())
