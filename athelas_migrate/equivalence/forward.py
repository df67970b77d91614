"""The eval-mode sections: `outputs` (both models on the same batches), `stored` (outputs saved with the
legacy model), and the localisation of the first divergent module when they differ.

Batches come from the adapter (generated from the checkpoint, or the user's `--inputs`). To compare
another output of a family (besides logits and probabilities), extend `output_pairs`; to add another
eval-mode check, write a function that takes (report, pair, batches) and call it from `runner._verify`.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from .adapters import Batch, CannotVerifyError, Context, VerifyAdapter
from .compare import compare
from .inputs import load_inputs
from .localize import capture, localise, module_diffs, pair_modules
from .pairing import Pair
from .report import ERROR, EXPECTED, FAIL, PASS, Check, OutputDiff, Section, VerifyReport


def make_batches(report: VerifyReport, pair: Pair, inputs: Any) -> tuple[list[Batch], list[torch.Tensor] | None]:
    """The batches both models run on, and the legacy outputs stored with them (if the inputs hold any).

    Args:
        report: receives `inputs_source`.
        pair: with both models built.
        inputs: None (generated from the checkpoint), or a path or loaded object of real batches.

    Returns:
        (batches, stored outputs or None).

    Raises:
        CannotVerifyError: the inputs cannot be read or do not fit the family.
    """
    if inputs is not None:
        user, stored, report.inputs_source = load_inputs(inputs)
        return [user_batch(pair.adapter, pair.ctx, b, i) for i, b in enumerate(user)], stored
    batches = pair.adapter.make_batches(pair.ctx)
    report.inputs_source = f"generated from the checkpoint (seed {report.seed}): " + \
        "; ".join(f"{b.name} [{b.description}]" for b in batches)
    return batches, None


def user_batch(adapter: VerifyAdapter, ctx: Context, obj: Any, i: int) -> Batch:
    """One batch of the user's inputs, as the adapter feeds it.

    Args:
        adapter: the family's adapter.
        ctx: the context.
        obj: one element of the user's inputs.
        i: its index (names the batch).

    Returns:
        The batch.

    Raises:
        CannotVerifyError: the object is not a batch of this family.
    """
    try:
        return adapter.from_user(ctx, obj, i)
    except (ValueError, KeyError, TypeError) as exc:
        raise CannotVerifyError(f"--inputs: {exc}") from exc


def eval_sections(report: VerifyReport, pair: Pair, batches: list[Batch], stored: list[torch.Tensor] | None,
                  reference: Any, localisation: bool, modules: bool) -> None:
    """Add the `outputs` and (when there are stored outputs) `stored` sections; localise a divergence.

    Args:
        report: receives the sections, the per-output summary and the localisation.
        pair: with both models built.
        batches: from `make_batches`.
        stored: the legacy outputs stored with `batches`, or None.
        reference: a path or object of stored legacy outputs checked in addition (the gate's `.io.pt`).
        localisation: find the first divergent module when an output differs.
        modules: on a passing run too, record every aligned module's difference (for the HTML report).

    Raises:
        CannotVerifyError: the reference inputs cannot be read or do not fit the family.
    """
    adapter, ctx, atol, rtol = pair.adapter, pair.ctx, pair.atol, pair.rtol
    outputs = Section("outputs", "Eval-mode outputs")
    report.sections.append(outputs)
    first_bad = run_outputs(report, adapter, ctx, batches, outputs, atol, rtol)
    ref_batches, ref_outputs = (batches, stored) if stored is not None else _reference(report, pair, reference)
    if ref_batches and ref_outputs is not None:
        sec = Section("stored", "Stored legacy outputs")
        report.sections.append(sec)
        bad = run_stored(adapter, ctx, ref_batches, ref_outputs, sec, atol, rtol)
        first_bad = first_bad or bad
    if first_bad is not None and localisation:
        report.localisation = loc = localise_batch(adapter, ctx, first_bad, atol, rtol)
        if loc.get("module") is not None:
            outputs.notes.append(f"first divergent module: {loc['module']} ({loc.get('type')}; legacy "
                                 f"{loc.get('old_module')}): {loc.get('kind')}, max abs diff "
                                 f"{loc.get('max_abs'):.3e}")
    elif modules and batches:  # a passing run: how close every aligned module came to the tolerance
        outputs.summary["modules"] = localise_batch(adapter, ctx, worst_row(adapter, batches[0], [0]), atol,
                                                    rtol).get("modules", [])


def _reference(report: VerifyReport, pair: Pair, reference: Any) -> tuple[list[Batch], Any]:
    """The batches and stored outputs of `reference` (([], None) without one, or when it stores no outputs)."""
    if reference is None:
        return [], None
    ref_user, ref_outputs, desc = load_inputs(reference)
    if ref_outputs is None:
        return [], None
    report.notes.append(f"stored legacy outputs checked: {desc}")
    return [user_batch(pair.adapter, pair.ctx, b, i) for i, b in enumerate(ref_user)], ref_outputs


def _forward(adapter: VerifyAdapter, side: str, model: torch.nn.Module, batch: Batch, ctx: Context) -> Any:
    with torch.no_grad():
        return adapter.forward(side, model, batch, ctx)


def output_pairs(adapter: VerifyAdapter, ctx: Context, out_new: torch.Tensor,
                 out_old: torch.Tensor) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """The named outputs compared: logits and probabilities of a classifier, else the one output.

    Args:
        adapter: the family's adapter.
        ctx: the context, with both models built.
        out_new: the refactored model's output.
        out_old: the legacy model's output.

    Returns:
        (name, refactored output, legacy output) triples.
    """
    if adapter.classifier(ctx):
        return [("logits", out_new, out_old),
                ("probabilities", torch.softmax(out_new, dim=1), torch.softmax(out_old, dim=1))]
    return [("output", out_new, out_old)]


def run_outputs(report: VerifyReport, adapter: VerifyAdapter, ctx: Context, batches: list[Batch],
                section: Section, atol: float, rtol: float) -> Batch | None:
    """Run both models on every batch and add one check per output and batch.

    Args:
        report: receives the per-output summary (`report.outputs`).
        adapter: the family's adapter.
        ctx: the context, with both models built.
        batches: the batches.
        section: the `outputs` section.
        atol: absolute tolerance.
        rtol: relative tolerance.

    Returns:
        The batch (its worst row) to localise the first failure on, or None when nothing failed.
    """
    first_bad = None
    t0 = time.perf_counter()
    max_len = adapter.max_len(ctx) if adapter.has_text else None
    for batch in batches:
        bad = _batch_outputs(report, adapter, ctx, batch, section, atol, rtol, max_len)
        first_bad = first_bad or bad
    if not any(c.status in (PASS, FAIL) for c in section.checks):
        section.add(Check("compared", ERROR, "no batch could be compared (every batch raised or has a length "
                          "the legacy model does not handle as v2 does)"))
    section.duration_s = time.perf_counter() - t0
    return first_bad


def _batch_outputs(report: VerifyReport, adapter: VerifyAdapter, ctx: Context, batch: Batch, section: Section,
                   atol: float, rtol: float, max_len: int | None) -> Batch | None:
    """The checks of one batch; returns what to localise on when the refactored model differs or raises."""
    b = adapter.to_device(batch, ctx.device)
    # a real batch of another length than max_sen_len: the legacy model may be undefined there or
    # ignore the tail (see the domain section); such differences are expected, not failures
    expect = adapter.length_expectation(ctx, batch.length) if max_len and batch.length and \
        batch.length != max_len else "exact"
    t = time.perf_counter()
    try:
        out_old = _forward(adapter, "old", ctx.old_model, b, ctx)
    except Exception as exc:
        if expect == "undefined":
            section.add(Check(f"[{batch.name}]", EXPECTED, f"the legacy model is not defined for length "
                              f"{batch.length} (max_sen_len={max_len}): {type(exc).__name__}"))
        else:
            section.add(Check(f"[{batch.name}]", ERROR, f"the legacy model raised on this batch "
                              f"({batch.description}): {type(exc).__name__}: {exc}"))
        return None
    try:
        out_new = _forward(adapter, "new", ctx.new_model, b, ctx)
    except Exception as exc:
        section.add(Check(f"[{batch.name}]", FAIL, f"the refactored model raised where the legacy model did "
                          f"not ({batch.description}): {type(exc).__name__}: {exc}"))
        return batch
    dt = time.perf_counter() - t
    first_bad = None
    for name, a, o in output_pairs(adapter, ctx, out_new, out_old):
        d = compare(a, o, atol, rtol)
        status, detail = (PASS if d.ok else FAIL), (d.detail or batch.description)
        if not d.ok and expect == "prefix":
            status = EXPECTED
            detail = (f"expected difference: at length {batch.length} the legacy model pools only the first "
                      f"tokens (sized for max_sen_len={max_len}), v2 the whole sequence; {d.detail}")
        c = section.add(Check(f"{name} [{batch.name}]", status, detail, d.max_abs, d.max_rel, atol, rtol, dt,
                              data={"batch": batch.name, "batch_size": batch.size, "length": batch.length,
                                    "legacy_pooling": expect, "worst_index": d.worst}))
        if status != EXPECTED:
            report.outputs.setdefault(name, OutputDiff(name)).update(c)
        if status == FAIL and first_bad is None:
            first_bad = worst_row(adapter, batch, d.worst)
    return first_bad


def run_stored(adapter: VerifyAdapter, ctx: Context, batches: list[Batch], stored: list[torch.Tensor],
               section: Section, atol: float, rtol: float) -> Batch | None:
    """Check that the legacy model reproduces the stored outputs and the refactored model matches them.

    Args:
        adapter: the family's adapter.
        ctx: the context, with both models built.
        batches: the batches the outputs were stored for.
        stored: one stored legacy output per batch.
        section: the `stored` section.
        atol: absolute tolerance.
        rtol: relative tolerance.

    Returns:
        The batch (its worst row) where the refactored model first misses, or None.
    """
    first_bad = None
    for batch, ref in zip(batches, stored):
        b = adapter.to_device(batch, ctx.device)
        for side, model, who in (("old", ctx.old_model, "legacy model reproduces"),
                                 ("new", ctx.new_model, "refactored model matches")):
            t = time.perf_counter()
            try:
                out = _forward(adapter, side, model, b, ctx)
            except Exception as exc:
                section.add(Check(f"{side} [{batch.name}]", ERROR, f"{type(exc).__name__}: {exc}"))
                continue
            d = compare(out, ref.to(out.dtype), atol, rtol)
            section.add(Check(f"{side} [{batch.name}]", PASS if d.ok else FAIL,
                              f"{who} the stored legacy outputs" + (f": {d.detail}" if d.detail else ""),
                              d.max_abs, d.max_rel, atol, rtol, time.perf_counter() - t))
            if not d.ok and side == "new" and first_bad is None:
                first_bad = worst_row(adapter, batch, d.worst)
    return first_bad


def worst_row(adapter: VerifyAdapter, batch: Batch, worst: list[int] | None) -> Batch:
    """Localisation records every module's activations: one row (the worst one) keeps that small.

    Args:
        adapter: the family's adapter (`select_rows`).
        batch: the batch that differed.
        worst: the index of the worst element (its first entry is the row).

    Returns:
        That row as a batch, or the whole batch when it has one row or cannot be sliced.
    """
    if batch.size <= 1 or not worst:
        return batch
    try:
        return adapter.select_rows(batch, [int(worst[0])])
    except Exception:  # a batch the adapter cannot slice: localise on the whole batch
        return batch


def localise_batch(adapter: VerifyAdapter, ctx: Context, batch: Batch, atol: float, rtol: float) -> dict[str, Any]:
    """Run both models on `batch` recording every aligned module's output; name the first that diverges.

    Args:
        adapter: the family's adapter.
        ctx: the context, with both models built.
        batch: the batch (one row, usually).
        atol: absolute tolerance.
        rtol: relative tolerance.

    Returns:
        `localize.localise`'s result plus `modules` (every pair's difference) and `batch`; on a model that
        raises, {"module": None, "kind": "error", ...}.
    """
    b = adapter.to_device(batch, ctx.device)
    try:
        old_cap, _ = capture(ctx.old_model, lambda: adapter.forward("old", ctx.old_model, b, ctx))
        new_cap, _ = capture(ctx.new_model, lambda: adapter.forward("new", ctx.new_model, b, ctx))
    except Exception as exc:
        return {"module": None, "kind": "error", "detail": f"{type(exc).__name__}: {exc}", "batch": batch.name}
    pairs = pair_modules(ctx.old_model, ctx.new_model, ctx.rename)
    result = localise(old_cap, new_cap, pairs, atol, rtol)
    result["modules"] = module_diffs(old_cap, new_cap, pairs, atol, rtol)
    result["batch"] = batch.name
    return result
