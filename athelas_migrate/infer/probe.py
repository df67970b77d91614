"""Running the two models: what each module received and returned, and whether a tensor matters at all.

Inference uses the models themselves as evidence. Forward hooks record, per example input, the first call
of every module (its arguments and its output, cloned) and the order in which modules first ran. With
that record a candidate pair (old module, new module) is tested in isolation: load the old module's
tensors into a copy of the new one, feed it the old module's own recorded arguments, compare with the old
module's recorded output.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..equivalence.compare import compare_leaves, tensor_leaves
from ..errors import InputError, UsageError


def load_example_inputs(path: str, option: str = "--inputs") -> list[Any]:
    """The list of example inputs in a torch file, read with `weights_only=True` (never runs code).

    Args:
        path: a file written by `torch.save(list_of_inputs)`.
        option: how messages name the file's origin (a CLI option or "sample batch").

    Returns:
        The inputs: each a tensor, a tuple (spread into positional arguments) or any other plain value.

    Raises:
        UsageError: the file does not exist.
        InputError: it is unreadable, unsafe, or not a non-empty list.
    """
    try:
        data = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise UsageError(f"{option} {path}: no such file") from None
    except Exception as exc:  # torch raises many types for unreadable or unsafe files
        raise InputError(f"{option} {path}: not a file of example inputs loadable with weights_only=True "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    if not isinstance(data, list | tuple) or not data:
        raise InputError(f"{option} {path}: must hold a non-empty list of inputs, got {type(data).__name__}")
    return list(data)


def run(model: nn.Module, x: Any) -> Any:
    """One example input: `model(*x)` for a tuple, `model(x)` otherwise (the public contract).

    Args:
        model: the old model, or a copy of the new one loaded with inferred state.
        x: one example input.

    Returns:
        The model's output.
    """
    return model(*x) if isinstance(x, tuple) else model(x)


def _clone(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, tuple | list):
        return type(obj)(_clone(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    return obj


@dataclass
class Call:
    """One module call: its arguments and output, cloned."""

    args: tuple
    kwargs: dict
    output: Any


@dataclass
class Record:
    """Per module name: its first call on each input (None where it did not run); first-run order."""

    calls: dict[str, list[Call | None]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    outputs: list[Any] = field(default_factory=list)

    def called(self, name: str) -> bool:
        """Whether a module ran on any input.

        Args:
            name: the module name.

        Returns:
            True when some input called it.
        """
        return any(c is not None for c in self.calls.get(name, []))


def record(model: nn.Module, inputs: list[Any]) -> Record:
    """Run `model` on every input with hooks on every module; keep first calls, order and outputs.

    Args:
        model: the model (its hooks are removed afterwards).
        inputs: the example inputs.

    Returns:
        The Record.
    """
    rec = Record()
    names = [n for n, _ in model.named_modules()]
    rec.calls = {n: [None] * len(inputs) for n in names}
    current = [0]

    pending: dict[str, tuple] = {}  # arguments cloned *before* the call: an in-place forward cannot alter them
    started: set[str] = set()

    def make_pre_hook(name: str):
        def pre_hook(module, args, kwargs):
            if name not in started:  # order of *starting*: a parent before its children
                started.add(name)
                rec.order.append(name)
            if rec.calls[name][current[0]] is None and name not in pending:
                pending[name] = (_clone(args), _clone(kwargs))

        return pre_hook

    def make_hook(name: str):
        def hook(module, args, kwargs, output):
            slot = rec.calls[name]
            if slot[current[0]] is None and name in pending:
                call_args, call_kwargs = pending.pop(name)
                slot[current[0]] = Call(call_args, call_kwargs, _clone(output))

        return hook

    handles = [m.register_forward_pre_hook(make_pre_hook(n), with_kwargs=True) for n, m in model.named_modules()]
    handles += [m.register_forward_hook(make_hook(n), with_kwargs=True) for n, m in model.named_modules()]
    try:
        with torch.no_grad():
            for i, x in enumerate(inputs):
                current[0] = i
                rec.outputs.append(_clone(run(model, x)))
    finally:
        for h in handles:
            h.remove()
    return rec


def max_diff(new: Any, old: Any, atol: float) -> tuple[bool, float]:
    """Compare two outputs of any nesting; unpairable structures differ.

    Args:
        new: the new model's output.
        old: the old model's output.
        atol: absolute tolerance.

    Returns:
        (equal within atol, worst |diff|), inf when unpairable.
    """
    d = compare_leaves(tensor_leaves(new), tensor_leaves(old), atol, 0.0)
    if d is None:
        return False, float("inf")
    return d.ok, float(d.max_abs)


def local_test(module: nn.Module, state: dict[str, torch.Tensor], calls: list[Call | None],
               atol: float) -> tuple[bool, float]:
    """Does `module`, holding `state`, return what the old module returned on the old module's arguments?

    Args:
        module: a new module (a copy is loaded; it is not modified).
        state: its state dict, made from the old module's tensors.
        calls: the old module's recorded calls (None where it did not run).
        atol: absolute tolerance.

    Returns:
        (passed, worst |diff|); a strict load failure or a call that raises fails, and no call at all fails.
    """
    trial = copy.deepcopy(module).eval()
    try:
        trial.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError):
        return False, float("inf")
    worst, tested = 0.0, 0
    with torch.no_grad():
        for c in calls:
            if c is None:
                continue
            try:
                out = trial(*_clone(c.args), **_clone(c.kwargs))
            except Exception:  # a module that cannot take the other's arguments is not the same function
                return False, float("inf")
            ok, d = max_diff(out, c.output, atol)
            worst = max(worst, d)
            tested += 1
            if not ok:
                return False, worst
    return tested > 0, worst


def perturbed(value: torch.Tensor, seed: int) -> torch.Tensor:
    """A clearly different value of the same shape and dtype (bools: negated; ints: shifted; floats: replaced).

    Args:
        value: the original value.
        seed: seed of the replacement noise.

    Returns:
        The new tensor.
    """
    gen = torch.Generator().manual_seed(seed)
    if value.dtype == torch.bool:
        return ~value
    if not value.is_floating_point():
        return value + 1
    noise = torch.randn(value.shape, generator=gen, dtype=torch.float64)
    scale = float(value.double().abs().mean()) + 1.0
    return (value.double() + noise * scale).to(value.dtype)


def influence(model: nn.Module, key: str, inputs: list[Any], reference: list[Any], atol: float) -> float:
    """Worst output change when the tensor `key` is replaced by another value (0.0: it does not matter).

    Args:
        model: the model; the tensor is restored afterwards.
        key: a state key of a parameter or buffer.
        inputs: the inputs to run.
        reference: the model's unperturbed outputs on them.
        atol: absolute tolerance of the comparison.

    Returns:
        The worst |diff|; inf when the model cannot run with the perturbed value.
    """
    holder_name, _, attr = key.rpartition(".")
    holder = model.get_submodule(holder_name)
    original = getattr(holder, attr)
    worst = 0.0
    with torch.no_grad():
        saved = original.detach().clone()
        try:
            original.copy_(perturbed(saved, 1234))
            for x, ref in zip(inputs, reference):
                try:
                    out = run(model, x)
                except Exception:
                    return float("inf")
                worst = max(worst, max_diff(out, ref, atol)[1])
        finally:
            original.copy_(saved)
    return worst
