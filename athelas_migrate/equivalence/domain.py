"""The sequence-length domain of the text branch: where legacy and refactored models may differ.

The legacy last pool is a fixed `MaxPool1d(P_k)` sized for `max_sen_len`; the
refactored one is `AdaptiveMaxPool1d(1)`. For every length in
`max_sen_len - 10 .. max_sen_len + 15` both models run on the same batch and the
length is classified:

| category | meaning | status |
|---|---|---|
| `agrees` | both defined, outputs equal | pass |
| `differs-expected` | legacy pools over a prefix (ignores the tail), v2 over the whole sequence | expected |
| `legacy-raises` | legacy undefined (raises), v2 defined | expected |
| `both-raise` | neither model accepts this length (same behaviour) | expected |
| `differs-unexpected` | both pool the whole sequence yet the outputs differ | fail |
| `v2-raises` | legacy defined, v2 raises | fail |

`differs-expected` is decided by the pooling arithmetic, not by the values: each
check's `observed_difference` says whether this batch actually showed one.
"""

from __future__ import annotations

import time

import torch

from .adapters import Context, VerifyAdapter
from .compare import compare
from .report import ERROR, EXPECTED, FAIL, PASS, Check, Section

BELOW, ABOVE = 10, 15


def _run(adapter: VerifyAdapter, side: str, model, batch, ctx: Context):
    try:
        with torch.no_grad():
            return adapter.forward(side, model, batch, ctx), None
    except Exception as exc:
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]


def _ranges(lengths: list[int]) -> str:
    if not lengths:
        return "-"
    out, start, prev = [], lengths[0], lengths[0]
    for n in lengths[1:] + [None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ", ".join(out)


def run_domain(ctx: Context, adapter: VerifyAdapter, section: Section, atol: float, rtol: float) -> None:
    """Run both models at every length around `max_sen_len` and add one classified check per length range.

    Args:
        ctx: the verify context (both models, device, family).
        adapter: the family's adapter; it builds a batch of a given length and runs one side.
        section: where the checks go.
        atol: absolute tolerance for `agrees`.
        rtol: relative tolerance for `agrees`.
    """
    max_len = adapter.max_len(ctx)
    if max_len is None:
        section.add(Check("sequence lengths", ERROR, f"max_sen_len of the {ctx.family.name} text branch is unknown: "
                          "the domain cannot be checked (--skip-check domain to accept)"))
        return
    cats: dict[str, list[int]] = {}
    lengths = range(max(1, max_len - BELOW), max_len + ABOVE + 1)
    for length in lengths:
        t = time.perf_counter()
        batch = adapter.to_device(adapter.with_length(ctx, length), ctx.device)
        expect = adapter.length_expectation(ctx, length)
        out_o, err_o = _run(adapter, "old", ctx.old_model, batch, ctx)
        out_n, err_n = _run(adapter, "new", ctx.new_model, batch, ctx)
        d = None
        if err_o and err_n:
            cat, status = "both-raise", EXPECTED
            detail = f"neither model accepts it: legacy {err_o}; refactored {err_n}"
        elif err_o:
            cat, status, detail = "legacy-raises", EXPECTED, f"legacy raises ({err_o}); refactored is defined"
        elif err_n:
            cat, status, detail = "v2-raises", FAIL, f"the refactored model raises where legacy is defined: {err_n}"
        else:
            d = compare(out_n, out_o, atol, rtol)
            if expect == "prefix":
                cat, status = "differs-expected", EXPECTED
                detail = ("expected difference: legacy pools over the first tokens only (MaxPool1d sized for "
                          f"max_sen_len={max_len}), v2 over the whole sequence"
                          + ("" if not d.ok else "; equal on this batch by chance (the tail held no maximum)"))
            elif d.ok:
                cat, status, detail = "agrees", PASS, "agrees (legacy pools the whole sequence)"
            else:
                cat, status = "differs-unexpected", FAIL
                detail = "outputs differ although both models pool the whole sequence" + \
                    (f": {d.detail}" if d.detail else "")
        if expect == "undefined" and cat in ("agrees", "differs-expected", "differs-unexpected"):
            section.notes.append(f"length {length}: the legacy model ran although the pooling arithmetic says "
                                 "it should not")
        cats.setdefault(cat, []).append(length)
        section.add(Check(f"length {length}", status, detail, d.max_abs if d else None, d.max_rel if d else None,
                          atol if d else None, rtol if d else None, time.perf_counter() - t,
                          data={"length": length, "category": cat, "legacy_pooling": expect,
                                "observed_difference": bool(d is not None and not d.ok)}))
    section.summary = {"max_sen_len": max_len, "lengths": [lengths.start, lengths.stop - 1],
                       "categories": {k: v for k, v in cats.items()},
                       "ranges": {k: _ranges(v) for k, v in cats.items()}}
    section.notes.append("legacy defined and equal: " + _ranges(cats.get("agrees", [])) +
                         "; legacy ignores the tail (expected difference): " +
                         _ranges(cats.get("differs-expected", [])) +
                         "; legacy raises: " + _ranges(cats.get("legacy-raises", [])))
