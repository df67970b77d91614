"""`infer_rules`: draft a rule file from an old and a new model, and return it only once it is proven.

Steps: record both models on the probe inputs (probe.py), match tensors (match.py), drop what the old
forward never reads (proven by perturbing it), write the rules (collapse.py), apply them with the
rule engine, load strictly, compare outputs (proof.py). Same-shaped choices that do not reproduce the
outputs are permuted within their group before anything is refused.

Inputs are split: every other input probes, the rest prove (a single input does both, and the result
says so), unless `proof_inputs` are given.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..equivalence.runner import SMALL_MODEL
from ..errors import EXIT_CHECK_FAILED, AthelasError, InputError, UsageError
from ..io.tensor_ref import TensorRef
from ..rules.apply import apply_state_rules
from ..rules.schema import RuleFile, parse_rule_bytes
from .collapse import build_rules, to_toml
from .match import Entry, Matcher, Unit
from .probe import influence, record, run
from .proof import Proof, agreeing, divergence, load, prove

MAX_TRIALS = 120  # permutations tried per ambiguity group


class RuleInferenceError(AthelasError):
    """No mapping could be proven: lists what it could not fill or place, the candidates, the divergence."""

    exit_code = EXIT_CHECK_FAILED

    def __init__(self, message: str, unfilled: list[str] | None = None, unplaced: list[str] | None = None,
                 candidates: dict[str, list[str]] | None = None, divergence: dict[str, Any] | None = None):
        self.unfilled = list(unfilled or [])
        self.unplaced = list(unplaced or [])
        self.candidates = dict(candidates or {})
        self.divergence = divergence
        super().__init__(message)


@dataclass
class Inference:
    toml: str
    proof: Proof
    evidence: list[tuple[str, list[str]]]  # rule id -> evidence lines
    probe_inputs: int
    proof_inputs: int
    seconds: float
    local_tests: int
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ public API
def apply_rules(rules: str | Path, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Apply a rule file to any state dict with the rule engine (what `ckpt` does, without a checkpoint file).

    Args:
        rules: the rule file's TOML text, or a path to it (a Path, or a one-line str ending in `.toml`).
        state_dict: the old model's state dict.

    Returns:
        The new state dict, as torch tensors.
    """
    rf = _parse(rules)
    state = OrderedDict((k, TensorRef.from_torch(v, isinstance(v, nn.Parameter))) for k, v in state_dict.items())
    result = apply_state_rules(rf, state)
    return {k: ref.to_torch() for k, ref in result.state.items()}


def infer_rules(old_model: nn.Module, new_model: nn.Module, inputs: list[Any], family: str = "Model",
                from_version: str = "v1", to_version: str = "v2", **kwargs: Any) -> str:
    """The text of a proven rule file mapping `old_model`'s state dict onto `new_model`'s layout.

    Args:
        old_model: the model whose checkpoints exist.
        new_model: the refactored model (not modified: a copy is loaded for the proof).
        inputs: example inputs (one positional argument each, or a dict); split into probe and proof inputs.
        family: the rule file's family.
        from_version: the edge's source layout.
        to_version: the edge's target layout.
        **kwargs: `infer`'s keyword-only options (proof_inputs, atol, description).

    Returns:
        The TOML text.
    """
    return infer(old_model, new_model, inputs, family, from_version, to_version, **kwargs).toml


def _parse(rules: str | Path) -> RuleFile:
    if isinstance(rules, Path) or ("\n" not in str(rules) and str(rules).endswith(".toml")):
        path = Path(rules)
        return parse_rule_bytes(path.read_bytes(), path.name, str(path))
    return parse_rule_bytes(str(rules).encode(), "<inferred>")


# ------------------------------------------------------------------------------------------ inference
def infer(old_model: nn.Module, new_model: nn.Module, inputs: list[Any], family: str = "Model",
          from_version: str = "v1", to_version: str = "v2", *, proof_inputs: list[Any] | None = None,
          atol: float = 1e-5, description: str | None = None) -> Inference:
    """Infer and prove a rule file; see the module docstring for the steps.

    Args:
        old_model: the model whose checkpoints exist (put in eval mode while inferring, then restored).
        new_model: the refactored model (not modified: a copy is loaded for the proof).
        inputs: example inputs; every other one probes, the rest prove, unless `proof_inputs` are given.
        family: the rule file's family.
        from_version: the edge's source layout.
        to_version: the edge's target layout.
        proof_inputs: inputs kept for the proof alone.
        atol: absolute tolerance of the output comparisons.
        description: the rule file's description (default: the two class names).

    Returns:
        The Inference: TOML text, proof, evidence per rule and counts.

    Raises:
        UsageError: no inputs.
        InputError: a model cannot run on the example inputs.
        RuleInferenceError: some tensor cannot be placed, the rules do not load strictly, or the outputs
            differ on the probe or proof inputs (the error names the first divergent module).
    """
    t0 = time.perf_counter()
    inputs = list(inputs or [])
    if not inputs:
        raise UsageError("infer_rules needs at least one example input")
    notes: list[str] = []
    if proof_inputs is not None:
        probe_in, proof_in = inputs, list(proof_inputs)
    elif len(inputs) >= 2:
        probe_in, proof_in = inputs[0::2], inputs[1::2]
    else:
        probe_in = proof_in = inputs
        notes.append("one input only: the proof ran on the input the inference probed (give two or more)")
    modes, threads = [(m, m.training) for m in old_model.modules()], torch.get_num_threads()
    old_model.eval()
    if sum(p.numel() for p in old_model.parameters()) < SMALL_MODEL:
        torch.set_num_threads(1)  # tiny matmuls: threads only add contention (verify does the same)
    try:
        work = copy.deepcopy(new_model).eval()
        rec_old, rec_new = _record(old_model, probe_in, "old"), _record(work, probe_in, "new")
        matcher = Matcher(old_model, work, rec_old, rec_new, atol)
        matcher.run()
        drops = _drops(matcher, old_model, probe_in, rec_old.outputs, atol)
        _refuse_incomplete(matcher)
        with torch.no_grad():
            proof_ref = [run(old_model, x) for x in proof_in]
        header = [f"Inferred by athelas-migrate {__version__} ({type(old_model).__name__} -> "
                  f"{type(new_model).__name__}); review, then commit."]
        desc = description or f"{type(old_model).__name__} -> {type(new_model).__name__} (inferred)"
        old_sd = old_model.state_dict()

        def render(extra: list[str]) -> tuple[str, list]:
            rules = build_rules(matcher.entries() + drops, list(old_sd))
            with_notes = [(r, _evidence_lines(matcher.units, units, r)) for r, units in rules]
            return to_toml(family, from_version, to_version, desc, with_notes, header + extra), with_notes

        loaded: list[str] = []  # the text whose state `work` holds, and whether the probe inputs agreed

        def score() -> tuple:
            text, _ = render([])
            err = load(work, apply_rules(text, old_sd))
            loaded[:] = [] if err else [text]
            if err:
                return (False, -1, -float("inf")), err
            p = prove(work, probe_in, rec_old.outputs, atol)
            if p.ok:
                loaded.append("probe inputs agree")
                return (True, 0, 0.0), ""
            pairs = {u.new: u.old for u in matcher.units if u.kind in ("subtree", "module")}
            return (False, agreeing(work, probe_in[0], rec_old, pairs, atol), -p.worst), ""

        best, err = score()
        if not best[0] and not err:
            best = _search(matcher, score, best)
        text, _ = render([])
        if loaded[:1] != [text]:  # the search left another choice loaded: load the final one
            loaded[:] = []
            err = load(work, apply_rules(text, old_sd))
            if err:
                raise RuleInferenceError(f"the inferred rules do not load strictly into "
                                         f"{type(new_model).__name__}: {err}")
        proof = prove(work, proof_in, proof_ref, atol)
        # the probe inputs must agree too (already proven when the last score passed on this very text)
        probed = proof if len(loaded) == 2 else prove(work, probe_in, rec_old.outputs, atol)
        for check, xs in ((proof, proof_in), (probed, probe_in)):
            if not check.ok:
                _refuse_divergent(matcher, old_model, work, xs[check.first_bad], check, atol)
        proof_line = (f"Proof: {len(proof_in)} input(s) not used for inference, max |diff| {proof.worst:.3g} "
                      f"(atol {atol:g}); {len(matcher.units)} pairings, {matcher.tests} local tests.")
        text, with_notes = render([proof_line] + notes)
    finally:
        for module, training in modes:  # each submodule back in its own mode
            module.training = training
        torch.set_num_threads(threads)
    evidence = [(r["id"], lines) for r, lines in with_notes]
    return Inference(text, proof, evidence, len(probe_in), len(proof_in), time.perf_counter() - t0,
                     matcher.tests, notes)


def _record(model: nn.Module, inputs: list[Any], side: str):
    """The probe record; a model that cannot run on the user's inputs is the inputs' fault (exit 3)."""
    try:
        return record(model, inputs)
    except Exception as exc:  # any error raised by user model code
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        raise InputError(f"the {side} model ({type(model).__name__}) cannot run on the example inputs: "
                         f"{type(exc).__name__}: {first}") from exc


def _evidence_lines(units: list[Unit], indices: list[int], rule: dict) -> list[str]:
    if rule["op"] == "drop":
        return [rule["reason"]]
    lines = []
    for i in indices:
        if i < 0:
            continue
        u = units[i]
        what = f"{u.new or '<root>'} <- {u.old or '<root>'}: " if u.kind in ("subtree", "module") else ""
        line = what + u.evidence
        if line not in lines:
            lines.append(line)
    return lines[:4] + ([f"(and {len(lines) - 4} more pairings)"] if len(lines) > 4 else [])


def _drops(m: Matcher, old: nn.Module, inputs: list[Any], reference: list[Any], atol: float) -> list[Entry]:
    """Old tensors nothing was mapped from: dropped when replacing their value leaves every output unchanged."""
    out = []
    kept = [k for k in m.o.sd if k in m.placed]
    for key in [k for k in m.o.sd if k not in m.placed]:
        if influence(old, key, inputs, reference, atol) != 0.0:
            continue
        value = m.o.sd[key]
        reason = (f"not read by the forward: replacing its value leaves every output unchanged "
                  f"(on {len(inputs)} input(s)); the new model has no place for it")
        params: dict[str, Any] = {"reason": reason}
        twin = next((k for k in kept if m.o.sd[k].dtype == value.dtype and m.o.sd[k].shape == value.shape
                     and torch.equal(m.o.sd[k], value)), None)
        if twin is not None:
            params["restore"] = {"anchor": "^" + re.escape(twin) + "$", "key": key, "value": "copy"}
            params["reason"] = reason.replace("; the new", f"; it equals {twin}, restored from it on rollback; the new")
        elif not value.is_floating_point() and value.numel() and torch.equal(
                value.reshape(-1), torch.arange(value.numel(), dtype=value.dtype)):
            n = value.numel()
            anchor = next((k for k in kept if m.o.sd[k].dim() and m.o.sd[k].shape[0] == n), None)
            if anchor is not None:
                params["restore"] = {"anchor": "^" + re.escape(anchor) + "$", "key": key, "value": "arange",
                                     "dim": 0, "shape": [-1 if s == n else s for s in value.shape],
                                     "dtype": str(value.dtype).removeprefix("torch.")}
        m.placed.add(key)
        out.append(Entry("drop", [key], [], params))
    return out


def _refuse_incomplete(m: Matcher) -> None:
    unfilled = [k for k in m.n.sd if k not in m.filled]
    unplaced = [k for k in m.o.sd if k not in m.placed]
    if not unfilled and not unplaced:
        return
    cands: dict[str, list[str]] = {}
    for k in unfilled:
        mod = k.rpartition(".")[0]
        notes = m.considered.get(mod or "<root>") or [
            f"{c} (same number of elements)" for c in m.candidates_for(k, m.n, m.o, m.placed)]
        cands[k] = notes or ["no tensor of the old model with as many elements is left"]
    for k in unplaced:
        cands.setdefault(k, [f"{c} (same number of elements)" for c in m.candidates_for(k, m.o, m.n, m.filled)]
                         or ["changes the outputs when replaced, and no new tensor is left for it"])
    parts = []
    if unfilled:
        parts.append(f"target keys it could not fill: {_short(unfilled)}")
    if unplaced:
        parts.append(f"source keys it could not place (they change the outputs): {_short(unplaced)}")
    first = (unfilled or unplaced)[0]
    parts.append(f"best candidates for {first}: {'; '.join(cands[first][:3])}")
    raise RuleInferenceError("cannot infer a mapping: " + "; ".join(parts), unfilled, unplaced, cands)


def _short(keys: list[str], limit: int = 8) -> str:
    return ", ".join(keys[:limit]) + (f" (and {len(keys) - limit} more)" if len(keys) > limit else "")


def _search(m: Matcher, score, best: tuple) -> tuple:
    """Permute same-shaped choices group by group (forward order) while the score improves."""
    groups: OrderedDict[tuple, list[int]] = OrderedDict()
    for i, u in enumerate(m.units):
        if u.group is not None:
            groups.setdefault(u.group, []).append(i)

    def first_run(members: list[int]) -> float:
        starts = [m.n.order.get(m.units[i].new, math.inf) for i in members if m.units[i].new]
        targets = [m.n.order.get(t.rpartition(".")[0], math.inf) for i in members for t in m.units[i].local[0][2]]
        return min(starts + targets + [math.inf])

    for members in sorted(groups.values(), key=first_run):
        if best[0]:
            break
        units = [m.units[i] for i in members]
        if units[0].kind in ("split", "concat"):
            best = _permute_parts(units[0], score, best)
            continue
        if len(units) < 2:
            continue
        olds = [u.old for u in units]
        chosen = list(olds)
        for perm in itertools.islice(itertools.permutations(olds), 1, MAX_TRIALS):
            for u, o in zip(units, perm):
                u.old = o
            s, _ = score()
            if s > best:
                best, chosen = s, list(perm)
                if s[0]:
                    break
        for u, o in zip(units, chosen):
            u.old = o
        if chosen != olds:
            for u in units:
                u.evidence += "; the forward-order choice did not reproduce the outputs, this permutation does"
    return best


def _permute_parts(unit: Unit, score, best: tuple) -> tuple:
    op, srcs, tgts, params = unit.local[0]
    parts = tgts if op == "split" else srcs
    order = list(range(len(parts)))
    chosen = order
    for perm in itertools.islice(itertools.permutations(order), 1, MAX_TRIALS):
        new_parts = [parts[i] for i in perm]
        sizes = [params["sizes"][i] for i in perm]
        unit.local[0] = (op, srcs, new_parts, {**params, "sizes": sizes}) if op == "split" else \
            (op, new_parts, tgts, {**params, "sizes": sizes})
        s, _ = score()
        if s > best:
            best, chosen = s, list(perm)
            if s[0]:
                break
    unit.local[0] = (op, srcs, [tgts[i] for i in chosen], {**params, "sizes": [params["sizes"][i] for i in chosen]}) \
        if op == "split" else (op, [srcs[i] for i in chosen], tgts, {**params, "sizes": [params["sizes"][i]
                                                                                          for i in chosen]})
    if chosen != order:
        unit.evidence += "; part order proven by the outputs (not the order the modules run)"
    return best


def _refuse_divergent(m: Matcher, old: nn.Module, trial: nn.Module, x: Any, proof: Proof, atol: float) -> None:
    rename = {e.sources[0]: e.targets[0] for e in m.entries() if e.op == "rename"}
    where = divergence(old, trial, x, rename, atol) if not proof.error else None
    if where and where.get("module"):
        located = (f"first divergent module: {where['module']} ({where['type']}, paired with "
                   f"{where['old_module']}), {where['kind']}: max |diff| {where['max_abs']:.3g}")
    else:
        located = proof.error or (where or {}).get("detail", "")
    raise RuleInferenceError(
        f"no exact mapping: every key is placed, but the new model computes something else "
        f"(max |diff| {proof.worst:.3g} > atol {atol:g}); {located}", divergence=where)
