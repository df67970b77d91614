"""Training equivalence: loss, every gradient, the migrated optimizer state and one optimizer step.

Dropout is off (the models stay in eval mode; autograd is on), so both sides
compute deterministically. Parameters are paired through the rename map.
Each side builds its optimizer like its own `configure_optimizers` and loads the
optimizer state of its own file (OLD's into the legacy model, NEW's into the
refactored one), then both take one step from the same gradients' batch.

Memory stays near the checkpoint's size (`memory`): embedding tables get sparse
gradients, compared on the rows the batch touches (zero elsewhere on both sides);
an elementwise optimizer (SGD, Adam, ...) steps copies of the parameters, a big
parameter on the touched rows plus a sample of the others, which gives exactly
the full step's values there; the file-backed parameters are never written.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from .adapters import Batch, Context, VerifyAdapter
from .compare import Diff, compare
from .memory import ELEMENTWISE, rows_of, sparse_embedding_grads, step_rows, touched_rows
from .report import ERROR, FAIL, PASS, SKIP, Check, Section


def _tensors(obj: Any) -> Any:
    """Optimizer state from a checkpoint (lazy TensorRefs) as torch values mapped from the file: a step that
    writes in place works on copies (`_proxy_step`) or copies first (`_in_place_step`)."""
    from ..io.tensor_ref import TensorRef

    if isinstance(obj, TensorRef):
        return obj.to_torch(copy=False)
    if isinstance(obj, dict):
        return {k: _tensors(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_tensors(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_tensors(v) for v in obj)
    return obj


def saved_optimizer_state(raw) -> dict | None:
    """The first optimizer state a checkpoint stores, with torch tensors.

    Args:
        raw: the checkpoint as read by the restricted reader, or None.

    Returns:
        The state dict of `optimizer_states[0]`, or None when the file stores none.
    """
    states = (raw.top or {}).get("optimizer_states") if raw is not None else None
    if not states or not isinstance(states[0], dict):
        return None
    return _tensors(states[0])


def _detach_from_file(model: nn.Module) -> None:
    """Give trainable parameters their own memory: file-backed tensors share one copy-on-write mapping per
    process, so an in-place optimizer step would otherwise be seen by every later reader of the same file."""
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.clone()


def _aggregate(name: str, rows: list[tuple[str, Any]], atol: float, rtol: float, what: str) -> Check:
    worst_abs, worst_rel, bad, worst_name = 0.0, 0.0, [], None
    per: dict[str, Any] = {}
    for label, d in rows:
        per[label] = {"max_abs": d.max_abs, "max_rel": d.max_rel, "ok": d.ok}
        if not d.ok:
            bad.append(label)
        if worst_name is None or d.max_abs > worst_abs or math.isnan(d.max_abs):
            worst_abs, worst_name = d.max_abs, label
        worst_rel = max(worst_rel, d.max_rel) if not math.isnan(d.max_rel) else d.max_rel
    if bad:
        detail = f"{len(bad)} of {len(rows)} {what} differ: {', '.join(bad[:8])}" + (" ..." if len(bad) > 8 else "")
    else:
        detail = f"{len(rows)} {what} agree" + (f" (largest difference in {worst_name})" if worst_abs else
                                                 " (all bitwise equal)" if rows else "")
    return Check(name, FAIL if bad else PASS, detail, worst_abs, worst_rel, atol, rtol, data={"tensors": per})


def _optimizers(adapter: VerifyAdapter, ctx: Context, section: Section) -> tuple[Any, Any] | None:
    """Both sides' optimizers, or None after recording why they cannot be compared.

    `configure_optimizers` raising is an error (the check could not run: never a pass); one side
    building none is a failure; neither building one leaves nothing to compare (a note)."""
    built, errors = {}, []
    for side, who in (("old", "legacy"), ("new", "refactored")):
        try:
            built[side] = adapter.optimizer(side, ctx.old_model if side == "old" else ctx.new_model, ctx)
        except Exception as exc:
            errors.append(f"the {who} model's configure_optimizers raised {type(exc).__name__}: {exc}")
    if errors:
        section.add(Check("optimizer", ERROR, "; ".join(errors) + " (pass --skip-check optimizer to verify "
                          "without the optimizer checks)"))
        return None
    if built["old"] is None and built["new"] is None:
        section.notes.append("neither model configures an optimizer: optimizer state and step not compared")
        return None
    if built["old"] is None or built["new"] is None:
        side = "legacy" if built["old"] is None else "refactored"
        section.add(Check("optimizer", FAIL, f"the {side} model builds no optimizer; the other does"))
        return None
    return built["old"], built["new"]


def run_training(ctx: Context, adapter: VerifyAdapter, batch: Batch, section: Section, atol: float,
                 rtol: float, skip_optimizer: bool = False) -> None:
    """One training step on both models: loss, every gradient, the stored optimizer state, and the step.

    Dropout stays off (eval mode) so the two sides see the same arithmetic; a step that cannot run records
    an error check, never a pass.

    Args:
        ctx: the verify context with both models loaded.
        adapter: the family's adapter (labelled batch, loss, optimizer).
        batch: the batch to train on.
        section: where the checks go.
        atol: absolute tolerance.
        rtol: relative tolerance.
        skip_optimizer: leave out the optimizer checks (`--skip-check optimizer`).
    """
    old, new = ctx.old_model, ctx.new_model
    assert old is not None and new is not None
    batch = adapter.to_device(adapter.labelled(ctx, batch), ctx.device)
    section.notes.append(f"labelled batch {batch.name!r} ({batch.description}); dropout off (eval mode), "
                         "autograd on")
    for m in (old, new):
        m.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------ loss
    t = time.perf_counter()
    try:
        with torch.enable_grad(), sparse_embedding_grads(old, new):
            out_o = adapter.forward("old", old, batch, ctx)
            loss_o, how = adapter.loss("old", old, batch, out_o, ctx)
            out_n = adapter.forward("new", new, batch, ctx)
            loss_n, _ = adapter.loss("new", new, batch, out_n, ctx)
            loss_o.backward()
            loss_n.backward()
    except Exception as exc:
        section.add(Check("loss and gradients", ERROR, f"{type(exc).__name__}: {exc}",
                          duration_s=time.perf_counter() - t))
        return
    d = compare(loss_n.detach().reshape(1), loss_o.detach().reshape(1), atol, rtol)
    lo, ln = float(loss_o.detach()), float(loss_n.detach())
    section.add(Check("loss", PASS if d.ok else FAIL, f"{how}: legacy {lo:.8g}, refactored {ln:.8g}", d.max_abs,
                      d.max_rel, atol, rtol, time.perf_counter() - t, data={"legacy": lo, "refactored": ln}))

    # ------------------------------------------------------------- gradients
    t = time.perf_counter()
    new_params = dict(new.named_parameters())
    rows, problems, not_comparable = [], [], []
    norms: dict[str, list[float]] = {}
    paired_new = set()
    for name, p in old.named_parameters():
        target = ctx.rename.get(name)
        q = new_params.get(target) if target else None
        if q is None and "drop" in ctx.ops.get(name, []) and p.grad is None:
            not_comparable.append(f"{name} (dropped by the rules: no gradient on the legacy side either)")
            continue
        if q is None:
            problems.append(f"{name} has no parameter in the refactored model (rename map: {target})")
            continue
        paired_new.add(target)
        if p.requires_grad != q.requires_grad:
            problems.append(f"{name} requires_grad={p.requires_grad} but {target} requires_grad={q.requires_grad}")
            continue
        if p.grad is None and q.grad is None:
            continue
        if (p.grad is None) != (q.grad is None):
            problems.append(f"{name} / {target}: only one side has a gradient")
            continue
        if tuple(p.grad.shape) != tuple(q.grad.shape):
            if any(op not in ("rename",) for op in ctx.ops.get(name, [])):
                not_comparable.append(f"{name} ({'/'.join(ctx.ops[name])})")
                continue
            problems.append(f"{name} {list(p.grad.shape)} vs {target} {list(q.grad.shape)}")
            continue
        rows.append((f"{name} -> {target}", _grad_diff(q.grad, p.grad, atol, rtol)))
        norms[f"{name} -> {target}"] = [_norm(p.grad), _norm(q.grad)]
    unpaired = [n for n in new_params if n not in paired_new]
    check = _aggregate("gradients", rows, atol, rtol, "parameter gradients")
    check.data["norms"] = norms  # [legacy, refactored] gradient L2 norm per parameter pair
    check.duration_s = time.perf_counter() - t
    if problems or unpaired:
        check.status = FAIL
        extra = problems + [f"{n} (refactored) has no legacy parameter" for n in unpaired]
        check.detail = "; ".join(extra[:6]) + ("; " + check.detail if rows else "")
    if not_comparable:
        section.notes.append("gradients not compared (the rule changes the tensor's shape): "
                             + ", ".join(not_comparable))
    section.add(check)

    # ------------------------------------------------------- optimizer state
    t = time.perf_counter()
    if skip_optimizer:
        section.add(Check("optimizer", SKIP, "skipped by request (--skip-check optimizer): optimizer settings, "
                          "state and step not compared"))
        return
    pair = _optimizers(adapter, ctx, section)
    if pair is None:
        return
    opt_o, opt_n = pair
    st_o, st_n = saved_optimizer_state(ctx.raw_old), saved_optimizer_state(ctx.raw_new)
    if st_o is None and st_n is None:
        section.notes.append("neither file holds optimizer state: both optimizers start fresh")
    elif st_n is None and getattr(ctx.raw_new, "kind", "") == "safetensors":
        section.notes.append("optimizer state not compared: NEW is a safetensors file (weights only, by design); "
                             "both optimizers start fresh for the step")
        st_o = None
    elif st_o is None or st_n is None:
        missing = "OLD" if st_o is None else "NEW"
        section.add(Check("optimizer state", FAIL, f"only one file holds optimizer state ({missing} has none)"))
        return
    else:
        try:
            opt_o.load_state_dict(st_o)
            opt_n.load_state_dict(st_n)
        except Exception as exc:
            section.add(Check("optimizer state", ERROR, f"loading the saved optimizer state failed: "
                              f"{type(exc).__name__}: {exc}", duration_s=time.perf_counter() - t))
            return
    section.add(_optimizer_settings(opt_o, opt_n))
    if st_o is not None:
        section.add(_state_check(old, new, opt_o, opt_n, ctx, atol, rtol, time.perf_counter() - t))

    # ---------------------------------------------------------- one step
    t = time.perf_counter()
    pairs = [(name, p, new_params[ctx.rename[name]]) for name, p in old.named_parameters()
             if ctx.rename.get(name) in new_params and tuple(p.shape) == tuple(new_params[ctx.rename[name]].shape)]
    try:
        if _elementwise(opt_o) and _elementwise(opt_n):
            after, sliced = _proxy_step(pairs, opt_o, opt_n)
        else:
            after, sliced = _in_place_step(pairs, old, new, opt_o, opt_n), []
    except Exception as exc:
        section.add(Check("one optimizer step", ERROR, f"{type(exc).__name__}: {exc}"))
        return
    rows = [(f"{name} -> {ctx.rename[name]}", compare(b, a, atol, rtol)) for name, a, b in after]
    check = _aggregate("one optimizer step", rows, atol, rtol, "parameters after the step")
    if sliced:
        section.notes.append("one optimizer step: large parameters compared on the rows the batch touches plus "
                             "others spread over the table (the optimizer is elementwise): " + ", ".join(sliced))
    check.duration_s = time.perf_counter() - t
    section.add(check)


def _norm(grad: torch.Tensor) -> float:
    """The gradient's 2-norm (a sparse gradient: over the values it stores, the other rows being zero)."""
    return float((grad.coalesce().values() if grad.is_sparse else grad).norm())


def _grad_diff(new: torch.Tensor, old: torch.Tensor, atol: float, rtol: float) -> Diff:
    """Gradients compared; two sparse ones on the rows either stores (every other row is zero on both)."""
    if not (new.is_sparse and old.is_sparse):
        return compare(new.to_dense() if new.is_sparse else new, old.to_dense() if old.is_sparse else old,
                       atol, rtol)
    rows = torch.unique(torch.cat([touched_rows(new), touched_rows(old)]))
    d = compare(rows_of(new, rows), rows_of(old, rows), atol, rtol)
    if d.worst:  # an index into the compared rows: name the parameter's row
        row = int(rows[d.worst[0]])
        d.detail = d.detail.replace(f"worst at {d.worst}", f"worst at {[row, *d.worst[1:]]}")
        d.worst = [row, *d.worst[1:]]
    return d


def _elementwise(opt: Any) -> bool:
    return type(opt).__name__ in ELEMENTWISE and type(opt).__module__.startswith("torch.optim")


def _proxy_step(pairs: list, opt_o: Any, opt_n: Any) -> tuple[list, list[str]]:
    """One step of each side's optimizer class and settings, on copies of its parameters, gradients and
    state; a large parameter on the same rows (`step_rows`) for both sides. Returns (name, legacy value,
    refactored value) after the step for each pair, and the parameters stepped on a slice of rows."""
    rows_for: dict[int, torch.Tensor | None] = {}
    sliced = []
    for name, p, q in pairs:
        rows = step_rows(p.shape, p.grad, q.grad)
        rows_for[id(p)] = rows_for[id(q)] = rows
        if rows is not None:
            sliced.append(f"{name} ({rows.numel()} of {p.shape[0]} rows)")
    proxies = []
    for opt in (opt_o, opt_n):
        proxy: dict[int, nn.Parameter] = {}
        groups = []
        for group in opt.param_groups:
            params = []
            for p in group["params"]:
                if id(p) not in rows_for:  # a parameter without a partner (the gradients check named it)
                    rows_for[id(p)] = step_rows(p.shape, p.grad)
                proxy[id(p)] = _proxy(p, rows_for[id(p)])
                params.append(proxy[id(p)])
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": params})
        stepper = type(opt)(groups)
        for p, state in opt.state.items():
            if id(p) in proxy:
                stepper.state[proxy[id(p)]] = {k: _slice(v, p, rows_for[id(p)]) for k, v in state.items()}
        stepper.step()
        proxies.append(proxy)
    return [(name, proxies[0][id(p)].detach(), proxies[1][id(q)].detach()) for name, p, q in pairs], sliced


def _proxy(p: torch.Tensor, rows: torch.Tensor | None) -> nn.Parameter:
    data = p.detach().index_select(0, rows.to(p.device)) if rows is not None else p.detach().clone()
    out = nn.Parameter(data, requires_grad=p.requires_grad)
    if p.grad is not None:
        out.grad = rows_of(p.grad, rows) if rows is not None else (p.grad.to_dense() if p.grad.is_sparse
                                                                    else p.grad.clone())
    return out


def _slice(value: Any, p: torch.Tensor, rows: torch.Tensor | None) -> Any:
    if not isinstance(value, torch.Tensor):
        return value
    if rows is not None and tuple(value.shape) == tuple(p.shape):
        return value.index_select(0, rows.to(value.device))
    return value.clone()


def _in_place_step(pairs: list, old: nn.Module, new: nn.Module, opt_o: Any, opt_n: Any) -> list:
    """Any other optimizer steps the models themselves, on private copies of parameters and state."""
    for model, opt in ((old, opt_o), (new, opt_n)):
        _detach_from_file(model)
        for p in model.parameters():
            if p.grad is not None and p.grad.is_sparse:
                p.grad = p.grad.to_dense()
        for state in opt.state.values():
            for k, v in state.items():
                if isinstance(v, torch.Tensor):
                    state[k] = v.clone()
    opt_o.step()
    opt_n.step()
    return [(name, p.detach(), q.detach()) for name, p, q in pairs]


def _optimizer_settings(opt_o, opt_n) -> Check:
    to, tn = type(opt_o).__name__, type(opt_n).__name__
    diffs = []
    if to != tn:
        diffs.append(f"legacy {to} vs refactored {tn}")
    go, gn = opt_o.param_groups, opt_n.param_groups
    if len(go) != len(gn):
        diffs.append(f"{len(go)} vs {len(gn)} parameter groups")
    for i, (a, b) in enumerate(zip(go, gn)):
        for k in sorted(set(a) | set(b)):
            if k == "params":
                if len(a[k]) != len(b[k]):
                    diffs.append(f"group {i}: {len(a[k])} vs {len(b[k])} parameters")
                continue
            va, vb = a.get(k), b.get(k)
            if isinstance(va, float | int) and isinstance(vb, float | int) and not isinstance(va, bool):
                if not math.isclose(float(va), float(vb), rel_tol=1e-12, abs_tol=0.0):
                    diffs.append(f"group {i} {k}: {va} vs {vb}")
            elif va != vb and not (isinstance(va, tuple | list) and list(va) == list(vb or [])):
                diffs.append(f"group {i} {k}: {va!r} vs {vb!r}")
    g = go[0] if go else {}
    summary = f"{to}(lr={g.get('lr')}" + (f", momentum={g['momentum']}" if "momentum" in g else "") + \
        (f", weight_decay={g.get('weight_decay')}" if "weight_decay" in g else "") + ")"
    return Check("optimizer", FAIL if diffs else PASS, "; ".join(diffs) if diffs else f"both {summary}")


def _state_check(old: nn.Module, new: nn.Module, opt_o, opt_n, ctx: Context, atol: float, rtol: float,
                 dt: float) -> Check:
    new_params = dict(new.named_parameters())
    rows, problems = [], []
    for name, p in old.named_parameters():
        q = new_params.get(ctx.rename.get(name, ""))
        so, sn = opt_o.state.get(p, {}), opt_n.state.get(q, {}) if q is not None else {}
        if not so and not sn:
            continue
        if set(so) != set(sn):
            problems.append(f"{name}: state keys {sorted(so)} vs {sorted(sn)}")
            continue
        for k in so:
            a, b = so[k], sn[k]
            if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
                if tuple(a.shape) != tuple(b.shape):
                    problems.append(f"{name}.{k}: shape {list(a.shape)} vs {list(b.shape)}")
                else:
                    rows.append((f"{name}.{k}", compare(b, a, atol, rtol)))
            elif a != b:
                problems.append(f"{name}.{k}: {a!r} vs {b!r}")
    check = _aggregate("optimizer state", rows, atol, rtol, "optimizer buffers")
    check.duration_s = dt
    if problems:
        check.status = FAIL
        check.detail = "; ".join(problems[:6]) + "; " + check.detail
    return check
