"""Tensor comparison with the numbers a report needs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Diff:
    """One comparison's verdict and the numbers a report shows for it."""

    ok: bool
    max_abs: float
    max_rel: float
    detail: str = ""
    mismatched: int = 0
    numel: int = 0
    worst: list[int] | None = None  # index of the worst out-of-tolerance element


CHUNK = 1 << 20  # elements compared at a time (float64 temporaries stay small for big tensors)


def compare(new: torch.Tensor, old: torch.Tensor, atol: float, rtol: float) -> Diff:
    """`|new - old| <= atol + rtol * |old|` elementwise (old is the reference), in float64.

    NaN in the same places on both sides counts as equal (and is said in the detail); infinities of the
    same sign are equal. max_rel is max |new - old| / |old| over elements with old != 0 (inf where
    old == 0 != new). Big tensors are compared in chunks, so memory stays bounded.

    Args:
        new: the refactored model's tensor.
        old: the legacy reference.
        atol: absolute tolerance.
        rtol: relative tolerance, times |old|.

    Returns:
        The Diff; a shape mismatch or NaN on one side only fails it, with the reason in `detail`.
    """
    if tuple(new.shape) != tuple(old.shape):
        return Diff(False, math.inf, math.inf, f"shape {list(new.shape)} vs legacy {list(old.shape)}")
    numel = old.numel()
    if numel == 0:
        return Diff(True, 0.0, 0.0, "empty", 0, 0)
    if new.dtype == old.dtype and new.device == old.device and torch.equal(new, old):
        return Diff(True, 0.0, 0.0, "", 0, numel)
    nf, of = new.detach().reshape(-1), old.detach().reshape(-1)
    max_abs = max_rel = 0.0
    mism = nan_same = nan_diff = 0
    worst: tuple[float, int, float, float] | None = None  # (diff, index, new, old) of the worst bad element
    for start in range(0, numel, CHUNK):
        n = nf[start : start + CHUNK].to("cpu", torch.float64)
        o = of[start : start + CHUNK].to("cpu", torch.float64)
        nan_n, nan_o = torch.isnan(n), torch.isnan(o)
        nan_diff += int((nan_n ^ nan_o).sum())
        both = nan_n & nan_o
        nan_same += int(both.sum())
        n, o = n.masked_fill(both, 0.0), o.masked_fill(both, 0.0)
        same_inf = torch.isinf(n) & torch.isinf(o) & (torch.sign(n) == torch.sign(o))
        d = (n - o).abs().masked_fill(same_inf, 0.0)
        d = d.masked_fill(nan_n ^ nan_o, math.inf)
        ref = o.abs()
        bad = d > atol + rtol * ref
        bad |= torch.isnan(d)
        max_abs = max(max_abs, float(d.max()))
        nz = ref > 0
        rel = torch.where(nz, d / torch.where(nz, ref, torch.ones_like(ref)),
                          torch.where(d > 0, torch.full_like(d, math.inf), torch.zeros_like(d)))
        max_rel = max(max_rel, float(rel.max()))
        k = int(bad.sum())
        if k:
            mism += k
            idx = int(torch.argmax(torch.where(bad, d, torch.full_like(d, -1.0))))
            if worst is None or float(d[idx]) > worst[0]:
                worst = (float(d[idx]), start + idx, float(nf[start + idx]), float(of[start + idx]))
    if nan_diff:
        return Diff(False, math.nan, math.nan, f"NaN in {nan_diff} elements on one side only", nan_diff, numel)
    detail = f"NaN in the same {nan_same} places on both sides" if nan_same else ""
    where = None
    if mism and worst is not None:
        where = list(_unravel(worst[1], tuple(old.shape)))
        detail = (f"{mism} of {numel} elements differ; worst at {where}: {worst[2]:.8g} vs legacy {worst[3]:.8g}"
                  + (f"; {detail}" if detail else ""))
    return Diff(mism == 0, max_abs, max_rel, detail, mism, numel, where)


def _unravel(idx: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    for s in reversed(shape):
        out.append(idx % s if s else 0)
        idx //= s if s else 1
    return tuple(reversed(out))


def tensor_leaves(obj: Any) -> list[torch.Tensor]:
    """Tensors inside nested tuples, lists, dicts (and dict-like model outputs), in order.

    Args:
        obj: a model output of any nesting.

    Returns:
        The tensors, depth first in the order they appear; other leaves are ignored.
    """
    out: list[torch.Tensor] = []
    stack = [obj]
    while stack:
        cur = stack.pop(0)
        if isinstance(cur, torch.Tensor):
            out.append(cur)
        elif isinstance(cur, dict):
            stack[0:0] = list(cur.values())
        elif isinstance(cur, list | tuple):
            stack[0:0] = list(cur)
        elif hasattr(cur, "to_tuple"):
            stack[0:0] = list(cur.to_tuple())
    return out


def compare_leaves(new: list[torch.Tensor], old: list[torch.Tensor], atol: float, rtol: float) -> Diff | None:
    """Worst comparison over pairs of tensors (integer tensors must be equal).

    Args:
        new: the refactored side's tensors (`tensor_leaves` of its output).
        old: the legacy side's, in the same order.
        atol: absolute tolerance.
        rtol: relative tolerance.

    Returns:
        The failing or largest Diff, or None when the lists differ in length or are empty (cannot be paired).
    """
    if len(new) != len(old) or not new:
        return None
    worst: Diff | None = None
    for a, b in zip(new, old):
        if not (a.is_floating_point() or b.is_floating_point()):
            ok = tuple(a.shape) == tuple(b.shape) and torch.equal(a.cpu(), b.cpu())
            d = Diff(ok, 0.0 if ok else math.inf, 0.0 if ok else math.inf, "" if ok else "integer values differ")
        else:
            d = compare(a, b, atol, rtol)
        if worst is None or (not d.ok and worst.ok) or (d.ok == worst.ok and _gt(d.max_abs, worst.max_abs)):
            worst = d
    return worst


def _gt(a: float, b: float) -> bool:
    return (math.isnan(a) and not math.isnan(b)) or a > b
