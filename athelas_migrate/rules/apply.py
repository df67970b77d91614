"""Applying one rule file to a state dict: strict, one rule per key, every target produced once.

The applier names no op: each rule's op class (`rules/ops/`) maps the keys it claims; this module enforces
that every source key is claimed by exactly one rule and every target key produced once.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from ..errors import RuleError
from ..io.tensor_ref import TensorRef
from .ops import HPARAM_OPS, OPS, ApplyContext, HparamRule, KeyEvent, StateRule
from .schema import RuleFile

__all__ = ["EdgeResult", "KeyEvent", "apply_hparam_rules", "apply_state_rules"]


@dataclass
class EdgeResult:
    """The state dict one edge produced, what each rule did (for the audit) and the warnings."""

    state: OrderedDict[str, TensorRef]
    events: list[KeyEvent] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _list(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (and {len(keys) - limit} more)" if len(keys) > limit else "")


def _owners(rf: RuleFile, state: OrderedDict[str, TensorRef]) -> dict[str, StateRule]:
    """The one rule claiming each source key; RuleError naming unmatched and ambiguous keys."""
    active = [r for r in rf.rules if OPS[r.op].claims_keys]
    unmatched, ambiguous = [], []
    owner: dict[str, StateRule] = {}
    for key in state:
        hits = [r for r in active if r.matches(key)]
        if not hits:
            unmatched.append(key)
        elif len(hits) > 1:
            ambiguous.append(f"{key} ({', '.join(r.id for r in hits)})")
        else:
            owner[key] = hits[0]
    if unmatched:
        raise RuleError(f"{rf.name}: keys matched by no rule: {_list(unmatched)}", rule=rf.name)
    if ambiguous:
        raise RuleError(f"{rf.name}: keys matched by more than one rule: {_list(ambiguous)}", rule=rf.name)
    return owner


def apply_state_rules(rf: RuleFile, state: OrderedDict[str, TensorRef],
                      config: dict[str, Any] | None = None) -> EdgeResult:
    """Map every key through exactly one rule; refuse unmatched, ambiguous and colliding keys.

    Args:
        rf: the rule file (forward, or inverted for a rollback).
        state: the source state dict, in checkpoint order.
        config: the canonical config (shapes and `when` clauses name its keys).

    Returns:
        The produced state dict, one event per rule and key, and warnings.

    Raises:
        RuleError: a key is claimed by no rule or by two, a target is produced twice, or a tensor does not fit.
        ValidationError: a strict drop would lose information.
    """
    owner = _owners(rf, state)
    ctx = ApplyContext(state, config)
    for key, tensor in state.items():
        rule = owner[key]
        OPS[rule.op].apply_key(rule, key, tensor, ctx)
    for rule, parts in list(ctx.groups.values()):
        OPS[rule.op].apply_group(rule, parts, ctx)
    if ctx.collisions:
        raise RuleError(f"{rf.name}: target keys produced more than once: {_list(sorted(set(ctx.collisions)))}",
                        rule=rf.name)
    for rule in rf.rules:
        OPS[rule.op].add_keys(rule, ctx)
    for rule in rf.rules:
        OPS[rule.op].check(rule, ctx)
    return EdgeResult(ctx.produced, ctx.events, ctx.warnings)


def _plain(value: Any) -> bool:
    """JSON-representable (the stamp is also written as JSON into safetensors metadata)."""
    import json

    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def apply_hparam_rules(rules: list[HparamRule], config: dict[str, Any], recorded: dict[str, Any] | None = None,
                       record: dict[str, Any] | None = None) -> list[str]:
    """Edit the canonical config in place; nothing is lost silently, a rollback that cannot restore a value refuses.

    Args:
        rules: the edge's hparam rules, in order.
        config: the canonical config, edited in place.
        recorded: per forward rule, the value its key had before it ran, from the source's stamp; the inverse
            rules (`restore`) put exactly that back.
        record: filled with such records for the output's stamp (one per rule of an op that `records`).

    Returns:
        One line per change, for the report.

    Raises:
        RuleError: a template names a missing key.
        NotInvertibleError: a rollback would lose a value recorded nowhere.
    """
    notes = []
    for r in rules:
        op = HPARAM_OPS[r.op]
        if op.records and record is not None:
            before = {"key": r.key, "present": r.key in config}
            if r.key in config and _plain(config[r.key]):
                before["value"] = config[r.key]
            if not before["present"] or "value" in before:
                record[r.source] = before
        notes += op.apply(r, config, (recorded or {}).get(r.forward))
    return notes
