"""Tensor comparison with the numbers a report needs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Diff:
    ok: bool
    max_abs: float
    max_rel: float
    detail: str = ""
    mismatched: int = 0
    numel: int = 0


def compare(new: torch.Tensor, old: torch.Tensor, atol: float, rtol: float) -> Diff:
    """`|new - old| <= atol + rtol * |old|` elementwise (old is the reference), in float64.

    NaN in the same places on both sides counts as equal (and is said in the detail).
    max_rel is max |new - old| / |old| over elements with old != 0 (inf where old == 0 != new).
    """
    if tuple(new.shape) != tuple(old.shape):
        return Diff(False, math.inf, math.inf, f"shape {list(new.shape)} vs legacy {list(old.shape)}")
    n = new.detach().to("cpu", torch.float64)
    o = old.detach().to("cpu", torch.float64)
    if n.numel() == 0:
        return Diff(True, 0.0, 0.0, "empty", 0, 0)
    nan_n, nan_o = torch.isnan(n), torch.isnan(o)
    detail = ""
    if not torch.equal(nan_n, nan_o):
        return Diff(False, math.nan, math.nan, f"NaN in {int(nan_n.sum())} new vs {int(nan_o.sum())} legacy "
                    "elements, not in the same places", int((nan_n ^ nan_o).sum()), n.numel())
    if nan_o.any():
        detail = f"NaN in the same {int(nan_o.sum())} places on both sides"
        n, o = n.masked_fill(nan_n, 0.0), o.masked_fill(nan_o, 0.0)
    both_inf = torch.isinf(n) & torch.isinf(o) & (torch.sign(n) == torch.sign(o))
    d = (n - o).abs().masked_fill(both_inf, 0.0)
    ref = o.abs()
    bad = d > atol + rtol * ref
    max_abs = float(d.max())
    nz = ref > 0
    rel = torch.where(nz, d / torch.where(nz, ref, torch.ones_like(ref)), torch.where(d > 0, math.inf, 0.0))
    max_rel = float(rel.max())
    mism = int(bad.sum())
    if mism:
        idx = int(torch.argmax(torch.where(bad, d, torch.zeros_like(d))))
        where = list(_unravel(idx, tuple(o.shape)))
        detail = (f"{mism} of {o.numel()} elements differ; worst at {where}: {float(n.flatten()[idx]):.8g} vs "
                  f"legacy {float(o.flatten()[idx]):.8g}" + (f"; {detail}" if detail else ""))
    return Diff(mism == 0, max_abs, max_rel, detail, mism, o.numel())


def _unravel(idx: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    for s in reversed(shape):
        out.append(idx % s if s else 0)
        idx //= s if s else 1
    return tuple(reversed(out))


def tensor_leaves(obj: Any) -> list[torch.Tensor]:
    """Tensors inside nested tuples, lists, dicts (and dict-like model outputs), in order."""
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
    """Worst comparison over pairs of tensors; None when the structures cannot be paired."""
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
