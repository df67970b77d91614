"""Verify adapters of the BERT fusion families: BimodalBertCrossAttn, BimodalBertGateFusion,
BimodalBertMoE and TrimodalCrossAttentionBert (v1 -> v2).

The legacy model is the frozen `legacy.bert` class, constructed from OLD's canonical
config with the BERT config of `Family.configure` (`--bert-config`, `--set bert_config=...`,
a standard model name whose shapes agree, or NEW's hyper-parameters) and loaded strictly
from OLD's own tensors. A `bert.embeddings.position_ids` tensor saved by older
transformers is not a state key of today's `BertModel` (a non-persistent buffer): it is
installed into that buffer, so the legacy model runs with the saved positions as the old
code did (a position table that is not `arange` would then show up as an output difference).

Generated inputs (one seed), `[B, chunks, T]` ids and masks under the models' own batch keys:

| batch | B | chunks | T | text | tabular |
|---|---|---|---|---|---|
| `single` | 1 | 1 | 16 | partially padded | unit scale |
| `random` | 4 | 2 | 16 | partially padded, row 1's second chunk fully padded | unit scale |
| `vocab-sweep` | 8 | 3 | 16 | ids spread over `0..V-1` (both ends), a fully padded chunk | 1e-6 .. 1e4, negative, 0 |
| `extremes` | 4 | 1 | 16 | rows of id 0, of id V-1, alternating, random | 1e-6, 1e4, -1e4, constant |
| `positions` | 1 | 1 | max positions | every position embedding row used | unit scale |

(T is capped at the BERT's `max_position_embeddings`; the trimodal secondary text uses
other chunk counts and T=12 so the two texts differ in shape.) `random` is the training batch.

No sequence-length domain: both sides run the same `BertModel` and average its
`pooler_output` over chunks, with no length-dependent pooling, so the domain check of the
CNN families is not applicable (`has_text = False`; `domain_note` says why).
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from ...equivalence.adapters import Batch, Context, VerifyAdapter, first_optimizer
from ..cnn.verify import _tab

TEXT_LEN = 16
SECOND_TEXT_LEN = 12
POSITION_IDS = "bert.embeddings.position_ids"

# name, batch size, chunks, text pattern, tabular pattern
BATCH_SPECS = (
    ("single", 1, 1, "partial", "unit"),
    ("random", 4, 2, "padded-chunk", "unit"),
    ("vocab-sweep", 8, 3, "sweep", "scales"),
    ("extremes", 4, 1, "extremes", "extremes"),
    ("positions", 1, 1, "positions", "unit"),
)


def _text(gen: torch.Generator, vocab: int, n: int, chunks: int, length: int,
          pattern: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    """`[n, chunks, length]` ids and mask (padding: id 0, mask 0) and a description."""
    ids = torch.randint(1, max(2, vocab), (n, chunks, length), generator=gen)
    valid = torch.randint(1, length + 1, (n, chunks), generator=gen)
    if pattern == "positions":
        valid.fill_(length)
    elif n * chunks == 1:
        valid.fill_(max(1, length * 3 // 4))  # partially padded
    else:
        valid[0, 0] = length  # one full chunk
        valid.view(-1)[-1] = max(1, length // 2)  # and a partially padded one
    desc = "partially padded chunks"
    if pattern == "sweep":
        flat = torch.linspace(0, vocab - 1, ids.numel()).round().long()
        ids = flat[torch.randperm(flat.numel(), generator=gen)].view(n, chunks, length)
        desc = f"ids spread over 0..{vocab - 1} (both ends included), partially padded chunks"
    elif pattern == "extremes":
        ids[0] = 0
        if n > 1:
            ids[1] = vocab - 1
        if n > 2:
            ids[2, :, 0::2], ids[2, :, 1::2] = 0, vocab - 1
        desc = f"rows of id 0, of id {vocab - 1}, alternating, random; partially padded"
    elif pattern == "positions":
        desc = f"every position 0..{length - 1} used, ids 0 and {vocab - 1} included"
    else:
        desc = f"random ids (0 and {vocab - 1} included), partially padded chunks"
    pos = torch.arange(length).view(1, 1, length)
    mask = (pos < valid.unsqueeze(-1)).long()
    if pattern in ("padded-chunk", "sweep") and chunks > 1:
        row = min(1, n - 1)
        mask[row, -1] = 0  # one fully padded chunk (the legacy mean includes it)
        desc += f", row {row}'s chunk {chunks - 1} fully padded"
    ids = ids.masked_fill(mask == 0, 0)
    if pattern != "extremes":  # both ends of the vocabulary as real (unmasked) tokens
        ids[0, 0, 0], ids[0, 0, -1 if length > 1 else 0] = 0, vocab - 1
    return ids, mask, desc


class _BertFusionAdapter(VerifyAdapter):
    has_text = False  # no sequence-length domain (see domain_note)
    domain_note = ("sequence-length domain: not applicable (legacy and v2 run the same BertModel and average "
                   "pooler_output over chunks; no length-dependent pooling)")
    texts: tuple[str, ...] = ("text",)

    # ---------------------------------------------------------------- config
    def bert_config(self, ctx: Context, side: str) -> dict[str, Any]:
        bert = ctx.config_old["_bert_config"]
        return bert[side] if isinstance(bert, dict) and "primary" in bert else bert

    def text_name(self, ctx: Context, side: str) -> str:
        return ctx.config_old["text_name" if side == "text" else f"{side}_text_name"]

    def keys(self, ctx: Context, side: str) -> tuple[str, str]:
        cfg = ctx.config_old
        name = self.text_name(ctx, side)
        return (f"{name}_{cfg.get('text_input_ids_key') or 'input_ids'}",
                f"{name}_{cfg.get('text_attention_mask_key') or 'attention_mask'}")

    def fields(self, ctx: Context) -> list[str]:
        return list(ctx.config_old.get("tab_field_list") or [])

    def num_classes(self, ctx: Context) -> int:
        return int(ctx.config_old.get("num_classes") or 2)

    def label_keys(self, ctx: Context) -> list[str]:
        name = ctx.config_old.get("label_name") or ctx.config_new.get("label_name") or "label"
        return [f"{name}_processed", name] if self.num_classes(ctx) > 2 else [name, f"{name}_processed"]

    # ----------------------------------------------------------------- build
    def construct_old(self, ctx: Context, cls: type, state: dict[str, torch.Tensor]) -> nn.Module:
        config = {k: v for k, v in copy.deepcopy(ctx.config_old).items() if not k.startswith("_")}
        bert = copy.deepcopy(ctx.config_old["_bert_config"])
        if isinstance(bert, dict) and "primary" in bert:
            config.update(primary_bert_config=bert["primary"], secondary_bert_config=bert["secondary"],
                          bert_config=bert["primary"])
        else:
            config["bert_config"] = bert
        return cls(config)

    def build_old(self, ctx: Context, state: dict[str, torch.Tensor]) -> nn.Module:
        model = self.construct_old(ctx, self.old_class(ctx), state)
        saved = {k: state.pop(k) for k in [k for k in state if k.endswith(POSITION_IDS)]}
        model.load_state_dict(state, strict=True, assign=True)
        buffers = dict(model.named_buffers())
        for key, value in saved.items():
            buf = buffers.get(key)
            if buf is None or tuple(buf.shape) != tuple(value.shape):
                raise ValueError(f"{key} {list(value.shape)} has no place in today's BertModel "
                                 f"({None if buf is None else list(buf.shape)})")
            buf.copy_(value)  # the positions the old code ran with (normally arange)
        return model

    # ---------------------------------------------------------------- inputs
    def text_shape(self, ctx: Context, side: str, chunks: int, pattern: str) -> tuple[int, int]:
        max_pos = int(self.bert_config(ctx, side)["max_position_embeddings"])
        if pattern == "positions":
            return chunks, max_pos
        if side == "secondary":
            return (chunks % 3) + 1, min(SECOND_TEXT_LEN, max_pos)
        return chunks, min(TEXT_LEN, max_pos)

    def make_batches(self, ctx: Context) -> list[Batch]:
        fields = self.fields(ctx)
        out = []
        for i, (name, n, chunks, text_pattern, tab_pattern) in enumerate(BATCH_SPECS):
            gen = ctx.generator(i + 1)
            data: dict[str, Any] = {}
            desc = [f"B={n}"]
            for side in self.texts:
                vocab = int(self.bert_config(ctx, side)["vocab_size"])
                c, t = self.text_shape(ctx, side, chunks, text_pattern)
                ids_key, mask_key = self.keys(ctx, side)
                data[ids_key], data[mask_key], d = _text(gen, vocab, n, c, t, text_pattern)
                desc.append(f"{self.text_name(ctx, side)}: {c} chunk(s) x {t} tokens, {d}")
            if fields:
                tab, d = _tab(gen, n, len(fields), tab_pattern)
                data.update({f: tab[:, j].contiguous() for j, f in enumerate(fields)})
                desc.append(d)
            labels = torch.randint(0, self.num_classes(ctx), (n,), generator=gen)
            k = min(n, self.num_classes(ctx))
            labels[:k] = torch.arange(k)
            out.append(Batch(name, data, n, labels, ", ".join(desc)))
        return out

    def from_user(self, ctx: Context, obj: Any, index: int) -> Batch:
        if not isinstance(obj, dict):
            raise ValueError(f"batch {index}: a {self.family} batch is a dict of fields (ids and masks "
                             f"[B, chunks, T], tabular fields [B]), not a {type(obj).__name__}")
        sizes = []
        for side in self.texts:
            for key in self.keys(ctx, side):
                if key not in obj:
                    raise ValueError(f"batch {index}: no {key!r} (expected {list(self.keys(ctx, side))})")
                value = torch.as_tensor(obj[key])
                if value.dim() != 3:
                    raise ValueError(f"batch {index}: {key} must be [B, chunks, T], got {list(value.shape)}")
                sizes.append(int(value.shape[0]))
        missing = [f for f in self.fields(ctx) if f not in obj]
        if missing:
            raise ValueError(f"batch {index}: tabular fields missing: {', '.join(missing)}")
        labels = None
        for key in self.label_keys(ctx):
            if key in obj:
                labels = torch.as_tensor(obj[key])
                labels = (labels.argmax(dim=1) if labels.dim() > 1 else labels).reshape(-1).long()
                break
        n = sizes[0]
        desc = f"B={n}, " + ", ".join(
            f"{self.keys(ctx, s)[0]} {list(torch.as_tensor(obj[self.keys(ctx, s)[0]]).shape)}" for s in self.texts)
        return Batch(f"input-{index}", dict(obj), n, labels, desc)

    # --------------------------------------------------------------- running
    def forward(self, side: str, model: nn.Module, batch: Batch, ctx: Context) -> torch.Tensor:
        return model(batch.data)

    def optimizer(self, side: str, model: nn.Module, ctx: Context) -> torch.optim.Optimizer | None:
        """The AdamW (two groups) of the side's own `configure_optimizers`, at the configured learning rate.

        `configure_optimizers` asks the trainer for the number of steps (the linear warm-up/decay schedule):
        it is called with a stand-in trainer, and the scheduler's initial multiplier is undone (a saved
        optimizer state then restores the scheduled rate of the step it was saved at).
        """
        prev = model.__dict__.get("_trainer")
        model.__dict__["_trainer"] = SimpleNamespace(estimated_stepping_batches=1_000_000)
        try:
            opt = first_optimizer(model.configure_optimizers())  # an exception is reported by the caller
        finally:
            model.__dict__["_trainer"] = prev
        if opt is None:
            return None
        for group in opt.param_groups:
            if "initial_lr" in group:
                group["lr"] = group["initial_lr"]
        load = opt.load_state_dict

        def load_state_dict(state: dict) -> None:
            # A state saved at the end of the linear decay has lr 0, where an AdamW step changes nothing
            # whatever its moments: both sides then step at the base rate, so the step tests the moments.
            load(state)
            for group in opt.param_groups:
                if not group.get("lr") and group.get("initial_lr"):
                    group["lr"] = group["initial_lr"]

        opt.load_state_dict = load_state_dict  # type: ignore[method-assign]
        return opt


class CrossAttnAdapter(_BertFusionAdapter):
    family = "BimodalBertCrossAttn"


class GateAdapter(_BertFusionAdapter):
    family = "BimodalBertGateFusion"


class MoEAdapter(_BertFusionAdapter):
    family = "BimodalBertMoE"


class TrimodalAdapter(_BertFusionAdapter):
    family = "TrimodalCrossAttentionBert"
    texts = ("primary", "secondary")

