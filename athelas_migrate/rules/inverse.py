"""Inverses of rule files, for rollback: each rule's op class inverts it, or says why it cannot."""

from __future__ import annotations

from dataclasses import replace

from .ops import HPARAM_OPS, OPS, HparamRule, StateRule
from .ops.invert_regex import invert_rename
from .schema import RuleFile

__all__ = ["hparam_rollback", "invert_file", "invert_hparam_rule", "invert_rename", "invert_state_rule"]


def invert_state_rule(rule: StateRule) -> StateRule:
    """The state rule of the reverse edge.

    Args:
        rule: a forward rule.

    Returns:
        The rule undoing it.

    Raises:
        NotInvertibleError: the rule cannot be undone (the message names it and says why).
    """
    return OPS[rule.op].invert(rule)


def invert_hparam_rule(rule: HparamRule) -> HparamRule:
    """The hparam rule of the reverse edge: `set` and `drop` invert to `restore` (the value recorded in the stamp
    when the forward edge ran, else the rule file's statement, see `apply_hparam_rules`).

    Args:
        rule: a forward rule.

    Returns:
        The rule undoing it.

    Raises:
        NotInvertibleError: the rule cannot be undone.
    """
    return HPARAM_OPS[rule.op].invert(rule)


def hparam_rollback(rule: HparamRule) -> str:
    """How rolling back over `rule` restores its key when the checkpoint's stamp holds no record (`history`).

    Args:
        rule: a forward hparam rule.

    Returns:
        One line for `history`.
    """
    return HPARAM_OPS[rule.op].rollback(rule)


def invert_file(rf: RuleFile) -> RuleFile:
    """The rule file for the reverse edge.

    Args:
        rf: a forward rule file.

    Returns:
        The file mapping its target layout back to its source layout.

    Raises:
        NotInvertibleError: naming the first rule that cannot be undone.
    """
    return replace(
        rf,
        source_version=rf.target_version,
        target_version=rf.source_version,
        rules=[invert_state_rule(r) for r in rf.rules],
        hparams=[invert_hparam_rule(r) for r in reversed(rf.hparams)],
        name=f"{rf.name} (inverse)",
    )
