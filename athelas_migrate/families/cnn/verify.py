"""Verify adapters of the CNN families: TextCNN, TabAE and BimodalCNN (v0 MultimodalCNN, v1).

Generated inputs are derived from the checkpoint: token ids over the whole
vocabulary (0 and the last id included) at `max_sen_len`, tabular values at
several scales (1e-6, unit, 1e4, negative, zero, constant rows), batch sizes
1, 4, 8 and 16, all from one seed.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from athelas_migrate.components.cnn_encoder import branch_output_length
from legacy.text_cnn import legacy_pool_size

from ...equivalence.adapters import Batch, Context, VerifyAdapter

BATCH_SPECS = (  # name, batch size, tabular pattern
    ("single", 1, "unit"),
    ("vocab-sweep", 8, "scales"),
    ("random", 16, "unit"),
    ("extremes", 4, "extremes"),
)
ROW_SCALES = (1e-6, 1.0, 1e4, -1.0, -1e4, 0.0, -1e-6, 1.0)  # negative scale: all values negative


def _ids(gen: torch.Generator, vocab: int, n: int, length: int, pattern: str) -> tuple[torch.Tensor, str]:
    if pattern == "sweep":
        flat = torch.linspace(0, vocab - 1, n * length).round().long()
        flat = flat[torch.randperm(flat.numel(), generator=gen)]
        return flat.view(n, length), f"ids spread over 0..{vocab - 1} (both ends included)"
    ids = torch.randint(0, vocab, (n, length), generator=gen)
    if pattern == "extremes":
        ids[0] = 0
        if n > 1:
            ids[1] = vocab - 1
        if n > 2:
            ids[2, 0::2], ids[2, 1::2] = 0, vocab - 1
        return ids, f"rows of id 0, of id {vocab - 1}, alternating, random"
    ids[0, 0], ids[-1, -1] = 0, vocab - 1
    return ids, f"random ids in 0..{vocab - 1} (0 and {vocab - 1} included)"


def _tab(gen: torch.Generator, n: int, width: int, pattern: str) -> tuple[torch.Tensor, str]:
    x = torch.randn(n, width, generator=gen)
    if pattern == "scales":
        rows = []
        for i in range(n):
            s = ROW_SCALES[i % len(ROW_SCALES)]
            rows.append(-x[i].abs() * abs(s) if s < 0 else x[i] * s)
        return torch.stack(rows), "tabular rows at scales 1e-6, 1, 1e4, negative, -1e4, zero, -1e-6"
    if pattern == "extremes":
        scales = [1e-6, 1e4, -1e4, None]
        rows = []
        for i in range(n):
            s = scales[i % len(scales)]
            rows.append(torch.full((width,), 3.0) if s is None else (-x[i].abs() * abs(s) if s < 0 else x[i] * s))
        return torch.stack(rows), "tabular rows at 1e-6, 1e4, all negative -1e4, constant"
    return x, "unit-scale tabular values"


class _CNNAdapter(VerifyAdapter):
    text_prefix = ""  # legacy key prefix of the text branch ("" or "text_subnetwork.")
    uses_tab = False

    # ---------------------------------------------------------------- config
    def tab_width(self, ctx: Context) -> int:
        fields = ctx.config_old.get("tab_field_list") if self.uses_tab else None
        return len(fields) if fields else 0

    def max_len(self, ctx: Context) -> int | None:
        return int(ctx.config_old.get("max_sen_len") or 512) if self.has_text else None

    def num_classes(self, ctx: Context) -> int:
        return int(ctx.config_old.get("num_classes") or 2)

    def construct_old(self, ctx: Context, cls: type, state: dict[str, torch.Tensor]) -> nn.Module:
        emb = state[f"{self.text_prefix}embeddings.weight"]
        # The legacy classes keep `word_embeddings` in their hyper-parameters and Lightning deep-copies
        # those: given the real matrix, the legacy model would hold a second full copy of it. A
        # zero-strided placeholder of the right shape costs one row; `load_state_dict(assign=True)`
        # then installs the file-backed matrix itself as the parameter.
        placeholder = torch.zeros(1, emb.shape[1], dtype=emb.dtype).expand(emb.shape[0], emb.shape[1])
        return cls(copy.deepcopy(ctx.config_old), int(emb.shape[0]), placeholder)

    # ---------------------------------------------------------------- inputs
    def make_batches(self, ctx: Context) -> list[Batch]:
        vocab = int(ctx.config_old.get("vocab_size") or 0)
        length = self.max_len(ctx)
        width = self.tab_width(ctx)
        out = []
        for i, (name, n, tab_pattern) in enumerate(BATCH_SPECS):
            gen = ctx.generator(i + 1)
            data: dict[str, Any] = {}
            desc = [f"B={n}"]
            if self.has_text:
                pattern = {"vocab-sweep": "sweep", "extremes": "extremes"}.get(name, "random")
                data["ids"], d = _ids(gen, vocab, n, length, pattern)
                desc += [f"L={length}", d]
            if width:
                data["tab"], d = _tab(gen, n, width, tab_pattern)
                desc.append(d)
            labels = torch.randint(0, self.num_classes(ctx), (n,), generator=gen)
            k = min(n, self.num_classes(ctx))
            labels[:k] = torch.arange(k)
            out.append(Batch(name, data, n, labels, ", ".join(desc), length))
        return out

    def with_length(self, ctx: Context, length: int) -> Batch | None:
        if not self.has_text:
            return None
        gen = ctx.generator(1000 + length)
        vocab = int(ctx.config_old["vocab_size"])
        data: dict[str, Any] = {"ids": torch.randint(0, vocab, (4, length), generator=gen)}
        if self.tab_width(ctx):
            data["tab"] = torch.randn(4, self.tab_width(ctx), generator=gen)
        return Batch(f"length-{length}", data, 4, None, f"B=4, L={length}", length)

    def length_expectation(self, ctx: Context, length: int) -> str:
        cfg = ctx.config_old
        n = int(cfg["num_layers"])
        mode = "exact"
        for k in cfg["kernel_size"]:
            p = legacy_pool_size(int(k), int(cfg["max_sen_len"]), n)
            t = branch_output_length(length, int(k), n)
            if p < 1 or t < p or t >= 2 * p:
                return "undefined"
            if t > p:
                mode = "prefix"
        return mode

    def text_keys(self, ctx: Context) -> list[str]:
        keys = []
        for model in (ctx.old_model, ctx.new_model):
            for attr in ("text_batch_key", "text_name"):
                key = getattr(model, attr, None)
                if isinstance(key, str) and key not in keys:
                    keys.append(key)
        cfg = ctx.config_old
        if cfg.get("text_name"):
            suffix = cfg.get("text_input_ids_key") or "input_ids"
            for key in (f"{cfg['text_name']}_{suffix}", f"{cfg['text_name']}_processed_{suffix}"):
                if key not in keys:
                    keys.append(key)
        return keys

    def _labels(self, ctx: Context, obj: dict) -> torch.Tensor | None:
        name = ctx.config_old.get("label_name") or ctx.config_new.get("label_name")
        if name and name in obj:
            labels = torch.as_tensor(obj[name])
            if labels.dim() > 1:
                labels = labels.argmax(dim=1)
            return labels.reshape(-1).long()
        return None

    def from_user(self, ctx: Context, obj: Any, index: int) -> Batch:
        data: dict[str, Any] = {}
        labels = None
        length = None
        if isinstance(obj, torch.Tensor):
            if self.has_text and not self.uses_tab and not obj.is_floating_point():
                data["ids"] = obj.long()
            elif not self.has_text and obj.is_floating_point():
                data["tab"] = obj.float()
            else:
                raise ValueError(f"batch {index}: a {self.family} batch must be a dict of fields, not a "
                                 f"{obj.dtype} tensor of shape {list(obj.shape)}")
        elif isinstance(obj, dict):
            labels = self._labels(ctx, obj)
            if self.has_text:
                key = next((k for k in self.text_keys(ctx) if k in obj), None)
                if key is None:
                    raise ValueError(f"batch {index}: no text ids under any of {self.text_keys(ctx)}")
                data["ids"] = torch.as_tensor(obj[key]).long()
            if self.uses_tab or not self.has_text:
                data["raw"] = obj  # tabular fields are read by name on each side
        else:
            raise ValueError(f"batch {index}: expected a batch dict or a tensor, got {type(obj).__name__}")
        first = data.get("ids", data.get("tab"))
        if first is None:
            first = next(v for v in obj.values() if hasattr(v, "__len__"))
        if "ids" in data:
            length = int(data["ids"].shape[1])
        n = len(first)
        desc = f"B={n}" + (f", L={length}" if length else "")
        return Batch(f"input-{index}", data, n, labels, desc, length)


class TextCNNAdapter(_CNNAdapter):
    family = "TextCNN"
    has_text = True

    def classifier(self, ctx: Context) -> bool:
        return int(ctx.config_old.get("hidden_common_dim") or 0) == self.num_classes(ctx)

    def forward(self, side: str, model: nn.Module, batch: Batch, ctx: Context) -> torch.Tensor:
        return model(batch.data["ids"])


class TabAEAdapter(_CNNAdapter):
    family = "TabAE"
    uses_tab = True

    def classifier(self, ctx: Context) -> bool:
        return False

    def construct_old(self, ctx: Context, cls: type, state: dict[str, torch.Tensor]) -> nn.Module:
        return cls(copy.deepcopy(ctx.config_old))

    def tab_width(self, ctx: Context) -> int:
        return len(ctx.config_old["tab_field_list"])

    def forward(self, side: str, model: nn.Module, batch: Batch, ctx: Context) -> torch.Tensor:
        return model(batch.data["tab"] if "tab" in batch.data else batch.data["raw"])

    def optimizer(self, side: str, model: nn.Module, ctx: Context) -> torch.optim.Optimizer | None:
        if side == "new":
            return super().optimizer(side, model, ctx)
        # the legacy TabAE has no configure_optimizers: build what the refactored class builds from the
        # same config (the saved optimizer state then restores lr, momentum, ...)
        cfg = {**ctx.config_new, **{k: v for k, v in ctx.config_old.items() if v is not None}}
        kind = str(cfg.get("optimizer_type") or "SGD").lower()
        lr = float(cfg.get("lr", 0.02))
        wd = float(cfg.get("weight_decay", 0.0) or 0.0)
        if kind == "sgd":
            return torch.optim.SGD(model.parameters(), lr=lr, momentum=float(cfg.get("momentum", 0.9)),
                                   weight_decay=wd)
        cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
        return cls(model.parameters(), lr=lr, weight_decay=wd, eps=float(cfg.get("adam_epsilon", 1e-8)))


class BimodalCNNAdapter(_CNNAdapter):
    family = "BimodalCNN"
    text_prefix = "text_subnetwork."
    has_text = True
    uses_tab = True

    def _fields(self, model: nn.Module, ctx: Context, side: str) -> list[str]:
        fields = getattr(model, "tab_field_list", None)
        if fields is None:
            fields = (ctx.config_old if side == "old" else ctx.config_new).get("tab_field_list")
        return list(fields or [])

    def _text_key(self, model: nn.Module) -> str:
        key = getattr(model, "text_batch_key", None) or getattr(model, "text_name", None)
        if not isinstance(key, str):
            raise ValueError(f"{type(model).__name__} does not say its text batch key")
        return key

    def forward(self, side: str, model: nn.Module, batch: Batch, ctx: Context) -> torch.Tensor:
        data = batch.data
        if "raw" in data:
            feed = dict(data["raw"])
        else:
            feed = {}
            fields = self._fields(model, ctx, side)
            if fields:
                tab = data["tab"]
                feed.update({f: tab[:, i] for i, f in enumerate(fields)})
        feed[self._text_key(model)] = data["ids"]
        return model(feed)

