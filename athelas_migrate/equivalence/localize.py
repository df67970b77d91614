"""Where do the two models start to disagree?

Modules are paired through the rename map: an old module `M` pairs with the new
module `M'` such that its tensors `M.rel` were renamed to `M'.rel` (a vote over
its parameters and buffers, ties to the first); modules without tensors (ReLU,
pooling, dropout) pair as same-named children of paired parents. Forward hooks
record the first call of every module on both sides; walking the new model's
forward order, the first paired module whose output differs is named, and
whether its inputs already differed (then the difference arises in code between
modules, e.g. a concatenation order) or not (the module itself computes
differently: its weights or its arithmetic).

The rename map comes from the rules under test; when a wrong rule moves whole
modules (say two conv branches swapped), the pairing follows the wrong rule and
each pair agrees. The forward order exposes that: paired modules then run in
different positions, and the new module found at the first such position is
compared with the legacy module that ran there.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .compare import Diff, compare_leaves, tensor_leaves


@dataclass
class Call:
    """The first call of one module: its tensor inputs and outputs (cloned)."""

    name: str
    type: str
    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]


@dataclass
class Capture:
    """Every module's first call in forward order, also by module name, with its position."""

    calls: list[Call] = field(default_factory=list)
    by_name: dict[str, Call] = field(default_factory=dict)
    index: dict[str, int] = field(default_factory=dict)


def pair_modules(old: nn.Module, new: nn.Module, rename: dict[str, str]) -> dict[str, str]:
    """Pair the modules of both models through the module path prefixes of renamed state keys.

    Args:
        old: the legacy model.
        new: the refactored model.
        rename: old state key -> new state key (from the rules under test).

    Returns:
        Old module name -> new module name.
    """
    new_modules = dict(new.named_modules())
    votes: dict[str, Counter] = {}
    first: dict[str, str] = {}
    for key, target in rename.items():
        parts = key.split(".")
        for cut in range(len(parts) - 1, -1, -1):
            mod, rel = ".".join(parts[:cut]), ".".join(parts[cut:])
            if target == rel:
                cand = ""
            elif target.endswith("." + rel):
                cand = target[: -len(rel) - 1]
            else:
                continue
            if cand in new_modules:
                votes.setdefault(mod, Counter())[cand] += 1
                first.setdefault(mod, cand)
    pairs: dict[str, str] = {"": ""}
    for mod, counter in votes.items():
        top = max(counter.values())
        best = [c for c, v in counter.items() if v == top]
        pairs[mod] = first[mod] if first[mod] in best else best[0]
    taken = set(pairs.values())
    names = [n for n, _ in old.named_modules()]
    # containers whose tensors were renamed below their own level (tab_subnetwork.embedding_layer.* ->
    # tab_encoder.embedding.*): pair with the common parent of their paired children's pairs
    for name in sorted(names, key=lambda n: -n.count(".")):
        if name in pairs or not name:
            continue
        kids = {pairs[c].rpartition(".")[0] for c in names if c.rpartition(".")[0] == name and c in pairs}
        if len(kids) == 1:
            cand = kids.pop()
            if cand in new_modules and cand not in taken:
                pairs[name] = cand
                taken.add(cand)
    # modules without tensors (activations, pooling, dropout): same-named children of paired parents
    for name in names:  # parents come before children
        if name in pairs or not name:
            continue
        parent, _, child = name.rpartition(".")
        if parent in pairs:
            cand = f"{pairs[parent]}.{child}" if pairs[parent] else child
            if cand in new_modules and cand not in taken:
                pairs[name] = cand
                taken.add(cand)
    return pairs


def capture(model: nn.Module, run) -> tuple[Capture, Any]:
    """Run `run()` with forward hooks on every module; keep the first call of each (cloned).

    Args:
        model: the model to hook; the hooks are removed afterwards, also on an exception.
        run: a no-argument callable that runs the model.

    Returns:
        (the Capture, what `run()` returned).
    """
    cap = Capture()
    handles = []

    def make_hook(name: str):
        def hook(module, args, kwargs, output):
            if name in cap.by_name:
                return
            call = Call(name, type(module).__name__,
                        [t.detach().clone() for t in tensor_leaves((args, kwargs))],
                        [t.detach().clone() for t in tensor_leaves(output)])
            cap.index[name] = len(cap.calls)
            cap.calls.append(call)
            cap.by_name[name] = call

        return hook

    for name, module in model.named_modules():
        handles.append(module.register_forward_hook(make_hook(name), with_kwargs=True))
    try:
        with torch.no_grad():
            result = run()
    finally:
        for h in handles:
            h.remove()
    return cap, result


def _label(name: str) -> str:
    return name or "<model>"


def localise(old_cap: Capture, new_cap: Capture, pairs: dict[str, str], atol: float,
             rtol: float) -> dict[str, Any]:
    """The first divergent module of the new model, in its forward order, with its difference.

    Args:
        old_cap: the legacy model's capture.
        new_cap: the refactored model's capture of the same batch.
        pairs: `pair_modules`' result.
        atol: absolute tolerance.
        rtol: relative tolerance.

    Returns:
        A finding: `module`, `kind` (computes differently, input differs, order, or none), `detail`, the
        differences, `paired_modules`, and `also` (later findings).
    """
    inv = {v: k for k, v in pairs.items()}
    findings: list[tuple[int, dict[str, Any]]] = []
    agreeing = 0
    for i, call in enumerate(new_cap.calls):
        o_name = inv.get(call.name)
        o_call = old_cap.by_name.get(o_name) if o_name is not None else None
        if o_call is None or not call.name:
            continue
        out = compare_leaves(call.outputs, o_call.outputs, atol, rtol)
        if out is None or out.ok:
            agreeing += 1
            continue
        ins = compare_leaves(call.inputs, o_call.inputs, atol, rtol)
        if ins is not None and ins.ok:
            kind = "computes differently"
            why = (f"same inputs, different outputs: {_label(call.name)} ({call.type}) computes differently "
                   f"from {_label(o_name)} ({o_call.type}) - its weights or its arithmetic")
        elif ins is None:
            kind = "computes differently"
            why = f"outputs differ; its inputs cannot be paired with those of {_label(o_name)}"
        else:
            parent = call.name.rpartition(".")[0]
            kind = "input differs"
            why = (f"its input already differs although every paired module before it agrees: the difference "
                   f"arises in the code between modules (in the forward of {_label(parent)})")
        findings.append((i, _finding(call, o_name, o_call, out, kind, why, agreeing)))
        break
    order = _order_finding(old_cap, new_cap, pairs, inv, atol, rtol)
    if order is not None:
        findings.append(order)
    if not findings:
        return {"module": None, "kind": "none", "detail": "no paired module differs; the difference arises in "
                "unpaired code (the top-level forward)", "paired_modules": len(pairs)}
    findings.sort(key=lambda f: f[0])
    result = findings[0][1]
    result["paired_modules"] = len(pairs)
    result["also"] = [f[1]["module"] for f in findings[1:]]
    return result


def module_diffs(old_cap: Capture, new_cap: Capture, pairs: dict[str, str], atol: float,
                 rtol: float) -> list[dict[str, Any]]:
    """Every paired module's output difference, in the new model's forward order (the HTML report's chart).

    `localise` stops at the first divergent module; this walks them all, so a passing run shows how close
    each aligned module is to the tolerance and a failing one shows where the differences start.

    Args:
        old_cap: the legacy model's capture.
        new_cap: the refactored model's capture of the same batch.
        pairs: `pair_modules`' result.
        atol: absolute tolerance.
        rtol: relative tolerance.

    Returns:
        One row per paired module with comparable outputs: module, type, old_module, max_abs, ok.
    """
    inv = {v: k for k, v in pairs.items()}
    rows = []
    for call in new_cap.calls:
        o_name = inv.get(call.name)
        o_call = old_cap.by_name.get(o_name) if o_name is not None else None
        if o_call is None or not call.name:
            continue
        d = compare_leaves(call.outputs, o_call.outputs, atol, rtol)
        if d is not None:
            rows.append({"module": call.name, "type": call.type, "old_module": o_name, "max_abs": d.max_abs,
                         "ok": d.ok})
    return rows


def _finding(call: Call, o_name: str, o_call: Call, diff: Diff, kind: str, why: str, agreeing: int) -> dict:
    return {"module": call.name, "type": call.type, "old_module": o_name, "old_type": o_call.type, "kind": kind,
            "max_abs": diff.max_abs, "max_rel": diff.max_rel, "detail": why + (f"; {diff.detail}" if diff.detail
                                                                                else ""),
            "agreeing_before": agreeing}


def _order_finding(old_cap: Capture, new_cap: Capture, pairs: dict[str, str], inv: dict[str, str], atol: float,
                   rtol: float) -> tuple[int, dict[str, Any]] | None:
    old_seq = [c.name for c in old_cap.calls if c.name and pairs.get(c.name) in new_cap.by_name]
    new_seq = [c.name for c in new_cap.calls if c.name and inv.get(c.name) in old_cap.by_name]
    for o_pos, n_name in zip(old_seq, new_seq):
        if pairs[o_pos] == n_name:
            continue
        n_call, o_call = new_cap.by_name[n_name], old_cap.by_name[o_pos]
        diff = compare_leaves(n_call.outputs, o_call.outputs, atol, rtol)
        if diff is None or diff.ok:
            return None  # a legitimately different call order, or shapes that do not pair
        why = (f"runs where {_label(o_pos)} ran in the legacy model, but the rename map gives it the tensors of "
               f"{_label(inv[n_name])} (and sends {_label(o_pos)} to {_label(pairs[o_pos])}); at this position "
               "the outputs differ")
        return new_cap.index[n_name], _finding(n_call, o_pos, o_call, diff, "order", why, 0)
    return None
