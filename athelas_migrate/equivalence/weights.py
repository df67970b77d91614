"""The `weights` section: every legacy tensor against its refactored counterpart through the rename map.

Tensors a rule changed with a tensor operation (transpose, reshape, split, ...) are not compared here:
their section note names them, and the outputs section proves them. To compare another kind of tensor,
add it to the rename map (the rules), not here.
"""

from __future__ import annotations

import time

import torch

from .adapters import Context
from .compare import compare
from .pairing import Pair
from .report import FAIL, PASS, Check, Section, VerifyReport


def weights_section(report: VerifyReport, pair: Pair) -> Section:
    """Add the `weights` section (one check, `tensors`) to the report.

    Args:
        report: receives the section.
        pair: with both models built.

    Returns:
        The section.
    """
    section = Section("weights", "Weights through the rename map")
    report.sections.append(section)
    section.add(weights_check(pair.ctx, pair.atol, pair.rtol, section))
    return section


def weights_check(ctx: Context, atol: float, rtol: float, section: Section) -> Check:
    """Compare every renamed tensor (bitwise first, then within the tolerances).

    Args:
        ctx: the context, with both models built.
        atol: absolute tolerance.
        rtol: relative tolerance.
        section: receives the note naming the tensors a rule operation changed.

    Returns:
        The `tensors` check; its data holds one row per compared tensor.
    """
    t = time.perf_counter()
    so, sn = ctx.old_model.state_dict(), ctx.new_model.state_dict()
    rows, transformed, bad = {}, [], []
    worst_abs = worst_rel = 0.0
    for k, target in ctx.rename.items():
        if any(op != "rename" for op in ctx.ops.get(k, [])):
            transformed.append(f"{k} ({'/'.join(o for o in ctx.ops[k] if o != 'rename')})")
            continue
        a, b = sn.get(target), so.get(k)
        if a is None or b is None:
            continue
        if a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b):
            rows[k] = {"target": target, "max_abs": 0.0, "equal": True}
            continue
        d = compare(a, b, atol, rtol)
        rows[k] = {"target": target, "max_abs": d.max_abs, "max_rel": d.max_rel, "equal": False, "ok": d.ok}
        worst_abs, worst_rel = max(worst_abs, d.max_abs), max(worst_rel, d.max_rel)
        if not d.ok:
            bad.append(f"{target} (legacy {k}): max abs diff {d.max_abs:.3e}")
    if transformed:
        section.notes.append("changed by a tensor operation of the rules, compared through the outputs only: "
                             + ", ".join(transformed))
    equal = sum(1 for r in rows.values() if r["equal"])
    if bad:
        detail = f"{len(bad)} of {len(rows)} tensors differ: " + "; ".join(bad[:6])
    else:
        detail = f"{len(rows)} tensors agree ({equal} bitwise equal)"
    return Check("tensors", FAIL if bad else PASS, detail, worst_abs, worst_rel, atol, rtol,
                 time.perf_counter() - t, data={"tensors": rows})
