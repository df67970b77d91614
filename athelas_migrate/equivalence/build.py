"""The `build` section: the legacy model rebuilt from OLD, the refactored one loaded from NEW, the rename map.

Both models are loaded strictly, so no random initial value survives; a model that cannot be built from
its file is a refusal of the input (exit 3), a bug of this tool is not (exit 70). A family changes how its
legacy model is constructed in its adapter (`VerifyAdapter.construct_old`), not here.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from ..errors import AthelasError
from .adapters import CannotVerifyError
from .memory import compute_parameters, skip_init
from .pairing import Pair
from .report import FAIL, PASS, Check, Section, VerifyReport

#: parameters outside embedding tables; below this, one CPU thread is faster than several
SMALL_MODEL = 2_000_000
#: what a checkpoint's contents can make a constructor or a strict load raise (a wrong size, a missing or
#: mistyped config value); anything else (AttributeError, NameError, ImportError, ...) is a bug: exit 70
INPUT_FAULTS = (AthelasError, ValueError, TypeError, KeyError, IndexError, RuntimeError)


def build_models(report: VerifyReport, pair: Pair, threads: int | None) -> Section:
    """Build both models into `pair.ctx`, set torch's threads, and add the `build` section to the report.

    Args:
        report: receives the section, the class names and the device notes.
        pair: from `pairing.open_pair`; its context gets `old_model` and `new_model`.
        threads: CPU threads for torch; None: one for models below SMALL_MODEL parameters, torch's otherwise.

    Returns:
        The `build` section.

    Raises:
        CannotVerifyError: a model cannot be built from its file (its config or tensors do not fit its class).
    """
    ctx, fam = pair.ctx, pair.ctx.family
    build = Section("build", "Build")
    report.sections.append(build)
    t = time.perf_counter()
    old_model = _build_old(pair)
    report.old_class = fam.legacy_classes[ctx.old_version]
    build.add(Check("legacy model", PASS, f"{report.old_class} constructed from OLD's config, OLD's "
                    f"{len(ctx.raw_old.state_dict)} tensors loaded strictly", duration_s=time.perf_counter() - t))
    t = time.perf_counter()
    new_model = _build_new(pair)
    report.new_class = fam.v2_class
    build.add(Check("refactored model", PASS, f"{fam.v2_class} loaded strictly from NEW's "
                    f"{len(ctx.raw_new.state_dict)} tensors", duration_s=time.perf_counter() - t))
    old_model.to(ctx.device).eval()
    new_model.to(ctx.device).eval()
    n_params = compute_parameters(new_model)  # an embedding table is a lookup: it does not make threads pay
    if threads is None and n_params < SMALL_MODEL:
        threads = 1
    if threads:
        torch.set_num_threads(int(threads))
    ctx.old_model, ctx.new_model = old_model, new_model
    if ctx.device.type == "cuda":
        report.device_name = torch.cuda.get_device_name(ctx.device)
        report.notes.append("CUDA: TF32 off (matmul and cuDNN), cuDNN deterministic, no autotuning, "
                            "float32 matmul precision 'highest', deterministic algorithms where they exist")
    build.add(rename_check(pair.map_result, new_model))
    return build


def _build_old(pair: Pair) -> nn.Module:
    """The legacy class of OLD's layout, constructed from OLD's config and loaded strictly from OLD's tensors."""
    ctx = pair.ctx
    state = {}
    for k, ref in ctx.raw_old.state_dict.items():
        x = ref.to_torch(copy=False)  # file-backed, copy-on-write: the weights are not read twice
        state[k] = x.to(ctx.compute_dtype) if x.is_floating_point() and x.dtype != ctx.compute_dtype else x
    cls_path = ctx.family.legacy_classes[ctx.old_version]
    try:
        with skip_init():  # every value comes from OLD (strict load): random initial values would be waste
            return pair.adapter.build_old(ctx, state)
    except INPUT_FAULTS as exc:
        raise CannotVerifyError(f"cannot rebuild the legacy model {cls_path} from OLD: {type(exc).__name__}: "
                                f"{exc}") from exc


def _build_new(pair: Pair) -> nn.Module:
    """The refactored class loaded strictly from NEW (in float64 when OLD's weights are float64)."""
    from ..materialise import build_v2_model

    ctx = pair.ctx
    try:
        with skip_init():  # as for OLD: the strict load replaces every initial value
            model = build_v2_model(ctx.new_result)
    except INPUT_FAULTS as exc:
        raise CannotVerifyError(f"cannot load the refactored model {ctx.family.v2_class} from NEW: "
                                f"{type(exc).__name__}: {exc}") from exc
    return model.double() if ctx.compute_dtype == torch.float64 else model


def rename_check(map_result: Any, new_model: nn.Module) -> Check:
    """Whether the rename map covers the refactored model exactly.

    Args:
        map_result: OLD migrated through the rules (its traces and created keys).
        new_model: the refactored model.

    Returns:
        A failing check when a refactored key has no legacy source, a target is unknown to the model, or a
        key is dropped without a reason; otherwise a pass that counts the pairs.
    """
    traces = map_result.traces
    renamed = [tr for tr in traces if tr.target]
    dropped = [tr for tr in traces if not tr.target]
    new_keys = set(new_model.state_dict())
    targets = {t for tr in renamed for t in tr.target.split(", ")}
    created = {tr.target for tr in map_result.created}
    uncovered = sorted(new_keys - targets - created)
    unknown = sorted(targets - new_keys)
    unreasoned = [tr.source for tr in dropped if not tr.reason]
    problems = []
    if uncovered:
        problems.append(f"refactored keys with no legacy source: {', '.join(uncovered[:6])}")
    if unknown:
        problems.append(f"rename targets the refactored model lacks: {', '.join(unknown[:6])}")
    if unreasoned:
        problems.append(f"dropped without a reason: {', '.join(unreasoned[:6])}")
    detail = (f"{len(renamed)} legacy keys paired with refactored keys, {len(dropped)} dropped with a reason"
              + (f", {len(created)} created" if created else ""))
    return Check("rename map", FAIL if problems else PASS, "; ".join(problems) if problems else detail,
                 data={"dropped": {tr.source: tr.reason for tr in dropped}})
