"""Verify adapters of the Names3Risk families (LSTM2Risk, Transformer2Risk; v1 -> v2).

What is compared: the legacy probability ``[B, 1]`` (sigmoid head) with the refactored
``softmax(logits)[:, 1:2]`` (2-logit head, widened with a zero row 0). Every activation before
the last Linear is bitwise equal; the residue (measured upstream <= 8.9e-8 on probabilities,
<= 1.5e-7 on logit margins) comes from the last matrix product alone: a 2-row weight goes
through a different GEMM kernel than a 1-row one, so the row of real weights is summed in
another order. The mapping cannot remove it; the domain section measures it per batch.

Batches are generated in the legacy format (``text`` padded with id 1, ``text_length`` sorted
descending or ``attn_mask``, one ``tabular`` tensor) and converted to the refactored one
(``{text_name}_{input_ids_key}``, ``text_length`` / ``{text_name}_{attention_mask_key}``, one
``[B]`` tensor per tabular field); ``single-deployed`` is the deployed notebook's format
(one row, int32 ids, no lengths, no mask). User batches (``--inputs``) may use either format.

Domain section (the spec's traps, B.7): unsorted lengths (both raise), running without
lengths (both pool over the padding), positions beyond the position table (both raise;
the legacy collate truncated, the target does not), a row whose mask is all False (NaN on
both sides), and the head residue itself.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...equivalence.adapters import Batch, Context, VerifyAdapter
from ...equivalence.compare import compare
from ...equivalence.report import EXPECTED, FAIL, PASS, Check, Section

PAD_ID = 1
TEXT_LEN = 12
RESIDUE_NOTE = ("the legacy head is Linear(., 1) + sigmoid, the refactored one Linear(., 2) with a zero row 0: "
                "softmax(logits)[:, 1] = sigmoid(z) exactly in real arithmetic; in float32 the 2-row matrix product "
                "runs another GEMM kernel than the 1-row one (another summation order), which leaves a residue of "
                "about 1e-7 that no mapping can remove")


class _Names3RiskAdapter(VerifyAdapter):
    has_text = False  # no max_sen_len pooling domain; the Names3Risk traps are checked in domain_checks
    lstm = True

    def classifier(self, ctx: Context) -> bool:
        return False  # one output: the probability of class 1, [B, 1] on both sides

    # ---------------------------------------------------------------- keys
    def keys(self, ctx: Context) -> dict[str, str]:
        cfg = ctx.config_old
        return {"ids": f"{cfg['text_name']}_{cfg['text_input_ids_key']}",
                "mask": f"{cfg['text_name']}_{cfg.get('text_attention_mask_key') or 'attention_mask'}"}

    def max_positions(self, ctx: Context) -> int | None:
        return None if self.lstm else int(ctx.config_old["max_sen_len"])

    # ------------------------------------------------------------ batches
    def pair(self, ctx: Context, legacy: dict[str, Any], labels: torch.Tensor | None) -> dict[str, Any]:
        """The same inputs in both formats: {"old": legacy batch, "new": refactored batch}."""
        keys, fields = self.keys(ctx), ctx.config_old["tab_field_list"]
        new: dict[str, Any] = {keys["ids"]: legacy["text"]}
        if "text_length" in legacy:
            new["text_length"] = legacy["text_length"]
        if "attn_mask" in legacy:
            new[keys["mask"]] = legacy["attn_mask"]
        tab = legacy["tabular"]
        new.update({f: tab[:, j].contiguous() for j, f in enumerate(fields)})
        if labels is not None:
            new[ctx.config_old.get("label_name") or "label"] = labels
        return {"old": legacy, "new": new}

    def legacy_batch(self, ctx: Context, gen: torch.Generator, n: int, length: int, *, lengths: bool = True,
                     ids: torch.Tensor | None = None, scale: float = 1.0, sort: bool = True) -> dict[str, Any]:
        vocab = int(ctx.config_old["n_embed"])
        valid = torch.randint(max(1, length // 2), length + 1, (n,), generator=gen)
        valid[0] = length
        if sort:
            valid = valid.sort(descending=True).values
        text = torch.randint(2, vocab, (n, length), generator=gen) if ids is None else ids
        text[:, 0] = 0  # [CLS]
        pos = torch.arange(length)[None, :]
        text = text.masked_fill(pos >= valid[:, None], PAD_ID)
        tab = torch.randn(n, len(ctx.config_old["tab_field_list"]), generator=gen) * scale
        out: dict[str, Any] = {"text": text, "tabular": tab}
        if lengths and self.lstm:
            out["text_length"] = valid
        elif lengths:
            out["attn_mask"] = pos < valid[:, None]
        return out

    def make_batches(self, ctx: Context) -> list[Batch]:
        vocab = int(ctx.config_old["n_embed"])
        length = min(TEXT_LEN, self.max_positions(ctx) or TEXT_LEN)
        full = self.max_positions(ctx) or 2 * TEXT_LEN
        out = []
        g = ctx.generator(1)
        single = self.legacy_batch(ctx, g, 1, length, lengths=False)
        single["text"] = single["text"].to(torch.int32)
        out.append(("single-deployed", single, "deployed format: 1 row, int32 ids, no lengths, no mask"))
        g = ctx.generator(2)
        what = "text_length sorted descending" if self.lstm else "attn_mask"
        out.append(("random", self.legacy_batch(ctx, g, 6, length), f"B=6, padded with id {PAD_ID}, {what}"))
        g = ctx.generator(3)
        out.append(("no-lengths", self.legacy_batch(ctx, g, 4, length, lengths=False),
                    "B=4, padded, no lengths/mask (pads take part on both sides)"))
        g = ctx.generator(4)
        sweep = torch.linspace(0, vocab - 1, 4 * full).round().long()
        sweep = sweep[torch.randperm(sweep.numel(), generator=g)].view(4, full)
        out.append(("vocab-sweep", self.legacy_batch(ctx, g, 4, full, ids=sweep),
                    f"ids over 0..{vocab - 1}, T={full}" + (" (every position)" if not self.lstm else "")))
        g = ctx.generator(5)
        out.append(("extremes", self.legacy_batch(ctx, g, 4, length, scale=1e3),
                    "tabular values scaled by 1e3"))
        batches = []
        for name, legacy, desc in out:
            n = legacy["text"].shape[0]
            labels = torch.arange(n) % 2
            batches.append(Batch(name, self.pair(ctx, legacy, labels), n, labels, desc,
                                 int(legacy["text"].shape[1])))
        return batches

    def from_user(self, ctx: Context, obj: Any, index: int) -> Batch:
        if not isinstance(obj, dict):
            raise ValueError(f"batch {index}: a {self.family} batch is a dict, not a {type(obj).__name__}")
        keys, fields = self.keys(ctx), ctx.config_old["tab_field_list"]
        if "text" in obj and "tabular" in obj:
            legacy = {k: torch.as_tensor(v) for k, v in obj.items() if k in ("text", "text_length", "attn_mask",
                                                                                "tabular")}
        elif keys["ids"] in obj:
            missing = [f for f in fields if f not in obj]
            if missing:
                raise ValueError(f"batch {index}: tabular fields missing: {', '.join(missing)}")
            ids = torch.as_tensor(obj[keys["ids"]])
            legacy = {"text": ids.squeeze(1) if ids.dim() == 3 else ids,
                      "tabular": torch.stack([torch.as_tensor(obj[f], dtype=torch.float32) for f in fields], 1)}
            if "text_length" in obj:
                legacy["text_length"] = torch.as_tensor(obj["text_length"])
            if keys["mask"] in obj:
                mask = torch.as_tensor(obj[keys["mask"]])
                legacy["attn_mask"] = (mask.squeeze(1) if mask.dim() == 3 else mask).bool()
        else:
            raise ValueError(f"batch {index}: expected the legacy keys text/tabular or {keys['ids']!r}")
        label = obj.get("label", obj.get(ctx.config_old.get("label_name") or "label"))
        labels = None if label is None else torch.as_tensor(label).reshape(-1).long()
        n = int(legacy["text"].shape[0])
        return Batch(f"input-{index}", self.pair(ctx, legacy, labels), n, labels,
                     f"B={n}, text {list(legacy['text'].shape)}", int(legacy["text"].shape[-1]))

    # ------------------------------------------------------------ running
    def forward(self, side: str, model: nn.Module, batch: Batch, ctx: Context) -> torch.Tensor:
        if side == "old":
            return model(batch.data["old"])
        return torch.softmax(model(batch.data["new"]), dim=1)[:, 1:2]

    def loss(self, side: str, model: nn.Module, batch: Batch, out: torch.Tensor,
             ctx: Context) -> tuple[torch.Tensor, str]:
        labels = batch.labels.to(out.device)
        if side == "old":
            return nn.functional.binary_cross_entropy(out, labels.float()[:, None]), \
                "each side's own loss: legacy BCE on the probability, refactored cross entropy on the 2 logits"
        return model.loss_fn(model(batch.data["new"]), labels.long()), ""

    def optimizer(self, side: str, model: nn.Module, ctx: Context) -> torch.optim.Optimizer:
        """Both sides get the AdamW of the refactored `configure_optimizers` (the legacy models are plain modules
        whose training script built an AdamW itself; the refactored OneCycleLR needs a Trainer's step count,
        which one compared step does not use): same class, same hyper-parameters, so one step is comparable."""
        cfg = ctx.new_model.config
        params = list(model.parameters()) if side == "new" else [  # the dead tab_layer has no counterpart
            p for name, p in model.named_parameters() if name in ctx.rename]
        return torch.optim.AdamW(params, lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"]),
                                 eps=float(cfg["adam_epsilon"]))

    # ------------------------------------------------------------- domain
    def domain_checks(self, ctx: Context, section: Section, atol: float, rtol: float) -> None:
        section.notes.append(RESIDUE_NOTE)
        length = min(TEXT_LEN, self.max_positions(ctx) or TEXT_LEN)
        self._head_residue(ctx, section, atol, rtol, length)
        if self.lstm:
            unsorted = self.legacy_batch(ctx, ctx.generator(11), 4, length, sort=False)
            unsorted["text_length"] = unsorted["text_length"].flip(0)
            self._both(ctx, section, "unsorted lengths", unsorted, "raise",
                       "the legacy collate sorted each batch by length (descending); unsorted lengths raise in "
                       "pack_padded_sequence on both sides", atol, rtol)
        else:
            p = self.max_positions(ctx)
            self._both(ctx, section, f"T = {p} (every position)", self.legacy_batch(ctx, ctx.generator(12), 3, p),
                       "agree", "the whole position table in use", atol, rtol)
            self._both(ctx, section, f"T = {p + 1} (beyond the position table)",
                       self.legacy_batch(ctx, ctx.generator(13), 3, p + 1), "raise",
                       "positions beyond max_sen_len have no embedding on either side; the legacy collate "
                       "truncated texts to block_size, the refactored model does not: truncate before calling it",
                       atol, rtol)
            empty = self.legacy_batch(ctx, ctx.generator(14), 3, length)
            empty["attn_mask"][1] = False
            self._both(ctx, section, "a row whose mask is all False", empty, "nan",
                       "every key of row 1 is hidden: softmax over -inf gives NaN on both sides", atol, rtol)
        self._both(ctx, section, "no lengths / no mask", self.legacy_batch(ctx, ctx.generator(15), 4, length,
                                                                         lengths=False), "agree",
                   "without lengths (LSTM) or a mask (Transformer) the padding takes part on both sides", atol, rtol)

    def _run(self, ctx: Context, side: str, batch: Batch) -> tuple[torch.Tensor | None, str]:
        model = ctx.old_model if side == "old" else ctx.new_model
        try:
            with torch.no_grad():
                return self.forward(side, model, self.to_device(batch, ctx.device), ctx), ""
        except Exception as exc:
            return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:160]

    def _both(self, ctx: Context, section: Section, name: str, legacy: dict[str, Any], expect: str,
              why: str, atol: float, rtol: float) -> None:
        n = legacy["text"].shape[0]
        batch = Batch(name, self.pair(ctx, legacy, None), n)
        out_o, err_o = self._run(ctx, "old", batch)
        out_n, err_n = self._run(ctx, "new", batch)
        if err_o or err_n:
            ok = expect == "raise" and err_o and err_n
            detail = f"legacy: {err_o or 'ran'}; refactored: {err_n or 'ran'}"
            section.add(Check(name, EXPECTED if ok else FAIL, f"{why} ({detail})" if ok else detail))
            return
        d = compare(out_n, out_o, atol, rtol)
        nan = bool(torch.isnan(out_o).any())
        if expect == "raise" or (expect == "nan") != nan or not d.ok:
            got = "raised on neither side" if expect == "raise" else (d.detail or f"NaN: {nan}")
            section.add(Check(name, FAIL, f"expected {expect}: {got}", d.max_abs, d.max_rel, atol, rtol))
            return
        section.add(Check(name, EXPECTED if expect == "nan" else PASS, why + (f"; {d.detail}" if d.detail else ""),
                          d.max_abs, d.max_rel, atol, rtol))

    def _head_residue(self, ctx: Context, section: Section, atol: float, rtol: float, length: int) -> None:
        """Legacy pre-sigmoid z against the refactored logit margin z1 - z0, and both heads' inputs."""
        legacy = self.legacy_batch(ctx, ctx.generator(16), 8, length)
        batch = self.to_device(Batch("head", self.pair(ctx, legacy, None), 8), ctx.device)
        seen: dict[str, torch.Tensor] = {}
        old_head, new_head = ctx.old_model.net[-2], ctx.new_model.classifier[-1]
        hooks = [old_head.register_forward_hook(lambda m, i, o: seen.update(old_in=i[0], z=o)),
                 new_head.register_forward_hook(lambda m, i, o: seen.update(new_in=i[0], logits=o))]
        try:
            with torch.no_grad():
                ctx.old_model(batch.data["old"])
                ctx.new_model(batch.data["new"])
        finally:
            for h in hooks:
                h.remove()
        inputs_equal = torch.equal(seen["old_in"], seen["new_in"])
        margin = seen["logits"][:, 1:2] - seen["logits"][:, 0:1]
        d = compare(margin, seen["z"], atol, rtol)
        zero = bool((seen["logits"][:, 0] == 0).all())
        status = PASS if d.ok and inputs_equal else FAIL
        section.add(Check("2-logit head residue", status,
                          f"last-layer inputs {'bitwise equal' if inputs_equal else 'DIFFER'}; logit 0 "
                          f"{'exactly 0' if zero else 'not 0 (fine-tuned after the migration)'}; logit margin "
                          f"z1 - z0 vs legacy z: max abs {d.max_abs:.2e}", d.max_abs, d.max_rel, atol, rtol))


class LSTM2RiskAdapter(_Names3RiskAdapter):
    family = "LSTM2Risk"
    lstm = True


class Transformer2RiskAdapter(_Names3RiskAdapter):
    family = "Transformer2Risk"
    lstm = False

