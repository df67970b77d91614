"""The proof: apply the rule file with the engine, load strictly, compare outputs; and where it fails, where.

A rule file is accepted only when the new model, loaded with `strict=True` from the engine's output,
returns the old model's outputs within `atol` on inputs the inference did not look at. While searching
among same-shaped choices the score is (proven, modules agreeing in forward order, -worst |diff|); a
refusal names the first module whose output diverges, with verify's own localisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..equivalence.compare import tensor_leaves
from ..equivalence.localize import capture, localise, pair_modules
from .probe import Record, max_diff, run


@dataclass
class Proof:
    ok: bool
    worst: float
    diffs: list[tuple[str, float]] = field(default_factory=list)  # "input i output j" -> max |diff|
    error: str = ""
    first_bad: int = 0  # index of the first input whose outputs differ


def load(trial: nn.Module, state: dict[str, torch.Tensor]) -> str:
    """Strict load into the trial copy of the new model.

    Args:
        trial: the copy of the new model.
        state: the state dict the rules produced.

    Returns:
        The load error on one line (at most 400 characters), or '' when it loads.
    """
    try:
        trial.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        return " ".join(str(exc).split())[:400]
    return ""


def prove(trial: nn.Module, inputs: list[Any], reference: list[Any], atol: float) -> Proof:
    """Outputs of the loaded trial model against the old model's, per input and output tensor.

    Args:
        trial: the new model, loaded with the inferred state.
        inputs: the inputs to run.
        reference: the old model's outputs on them.
        atol: absolute tolerance.

    Returns:
        The Proof; a run that raises, or a different number of outputs, is not proven.
    """
    diffs: list[tuple[str, float]] = []
    ok, worst, first_bad = True, 0.0, -1
    with torch.no_grad():
        for i, (x, ref) in enumerate(zip(inputs, reference)):
            try:
                out = run(trial, x)
            except Exception as exc:  # the mapping loads but the model cannot run: not proven
                return Proof(False, float("inf"), diffs, f"input {i}: {type(exc).__name__}: {exc}", i)
            new_leaves, old_leaves = tensor_leaves(out), tensor_leaves(ref)
            if len(new_leaves) != len(old_leaves):
                return Proof(False, float("inf"), diffs, f"input {i}: {len(new_leaves)} output tensors, "
                             f"the old model returns {len(old_leaves)}", i)
            for j, (a, b) in enumerate(zip(new_leaves, old_leaves)):
                good, d = max_diff(a, b, atol)
                diffs.append((f"input {i} output {j}", d))
                if not good and first_bad < 0:
                    first_bad = i
                ok &= good
                worst = max(worst, d)
    return Proof(ok, worst, diffs, "", max(first_bad, 0))


def agreeing(trial: nn.Module, x: Any, rec_old: Record, pairs: dict[str, str], atol: float) -> int:
    """How many paired modules agree, in the new model's forward order, before the first that does not.

    The search scores a failed candidate by it: more agreeing modules is closer.

    Args:
        trial: the loaded new model.
        x: the first probe input (the old calls compared are those of `rec_old` on it).
        rec_old: the old model's record on the probe inputs.
        pairs: new module name -> old module name.
        atol: absolute tolerance.

    Returns:
        The count.
    """
    cap, _ = capture(trial, lambda: run(trial, x))
    count = 0
    for call in cap.calls:
        old_name = pairs.get(call.name)
        if old_name is None or not call.name:
            continue
        old_call = rec_old.calls.get(old_name, [None])[0]
        if old_call is None:
            continue
        if not max_diff(call.outputs, tensor_leaves(old_call.output), atol)[0]:
            break
        count += 1
    return count


def divergence(old: nn.Module, trial: nn.Module, x: Any, rename: dict[str, str], atol: float) -> dict[str, Any]:
    """verify's localisation on one input: the first new module whose output differs from its old pair.

    Args:
        old: the old model.
        trial: the loaded new model.
        x: the input on which the outputs differ.
        rename: old state key -> new state key (the inferred rules).
        atol: absolute tolerance.

    Returns:
        equivalence.localize.localise's finding.
    """
    old_cap, _ = capture(old, lambda: run(old, x))
    new_cap, _ = capture(trial, lambda: run(trial, x))
    return localise(old_cap, new_cap, pair_modules(old, trial, rename), atol, 0.0)
