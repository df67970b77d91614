"""What an op is: the rule records it reads and writes, the context it applies in, its base class, the registry.

A state op is a subclass of `StateOp` registered with `@state_op`; a hyper-parameter op a subclass of `HparamOp`
registered with `@hparam_op` (see the package docstring for the steps). The engine never names an op: it
looks the rule's `op` up in `OPS` / `HPARAM_OPS` and calls the class's hooks.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ...errors import NotInvertibleError
from ...io.tensor_ref import TensorRef
from .fields import check_fields, require


@dataclass
class StateRule:
    """One `[[rules]]` entry, parsed: the op's name, its patterns, target templates and op-specific params."""

    id: str
    op: str
    match: list[re.Pattern[str]]
    to: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    restore: dict[str, Any] | None = None
    source: str = ""  # "<file>#<id>", for reports

    def matches(self, key: str) -> bool:
        """Whether one of the rule's patterns matches the whole `key` (a partial match would claim too much).

        Args:
            key: a source state-dict key.

        Returns:
            True when some pattern full-matches it.
        """
        return any(p.fullmatch(key) for p in self.match)


@dataclass
class HparamRule:
    """One `[[hparams]]` entry, parsed."""

    id: str
    op: str
    key: str
    to: str | None = None
    value: Any = None
    if_missing: bool = False
    reason: str = ""
    has_value: bool = False
    source: str = ""
    previous: Any = None  # `set`: the value the key had before this edge (restored on rollback without a record)
    has_previous: bool = False
    forward: str = ""  # inverse rules ("restore"): the forward rule whose recorded previous value they restore


@dataclass
class KeyEvent:
    """What one rule did to one key: the audit's unit."""

    rule: str  # "<file>#<id>"
    op: str
    sources: list[str]
    targets: list[str]
    reason: str = ""


@dataclass
class ApplyContext:
    """One rule file being applied to one state dict: what the ops read (`state`, `config`) and fill."""

    state: OrderedDict[str, TensorRef]
    config: dict[str, Any] | None
    produced: OrderedDict[str, TensorRef] = field(default_factory=OrderedDict)
    events: list[KeyEvent] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    collisions: list[str] = field(default_factory=list)
    groups: dict[tuple[str, tuple], tuple[StateRule, dict[int, str]]] = field(default_factory=dict)

    def emit(self, target: str, tensor: TensorRef) -> None:
        """Produce `target`; a key produced twice is collected and refused once every key has run.

        Collisions are collected rather than raised so the refusal can name all of them at once.

        Args:
            target: the target key.
            tensor: its tensor (a reference; nothing is loaded).
        """
        if target in self.produced:
            self.collisions.append(target)
        self.produced[target] = tensor

    def group(self, rule: StateRule, groups: tuple, index: int, key: str) -> None:
        """Hold `key` as part `index` of the group its captures name, for `StateOp.apply_group`.

        Ops that fuse several source keys into one target cannot act per key; they park the keys here.

        Args:
            rule: the rule claiming the key.
            groups: the pattern's captures, naming the group (e.g. the layer index).
            index: which part of the group the key is (the index of the pattern that matched).
            key: the source key.
        """
        self.groups.setdefault((rule.id, groups), (rule, {}))[1][index] = key


class Op:
    """What every op has: a name, whether rule files may use it, and inversion for rollback."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "op"  # how messages call it
    in_files: ClassVar[bool] = True  # False: made only by inverting another op, never written in a rule file
    one_way: ClassVar[str] = ""  # why rules of this op cannot be undone ("" when `inverse` undoes them)

    @classmethod
    def parse(cls, r: dict, rid: str, where: str) -> Any:
        """The rule from its TOML table (`id` and `op` already read); `StateOp` and `HparamOp` implement it.

        Args:
            r: the table.
            rid: the rule's id.
            where: its address for messages.

        Returns:
            The parsed rule (a StateRule or an HparamRule).

        Raises:
            RuleError: a field is missing, unknown or malformed.
        """
        raise NotImplementedError(f"{cls.kind} {cls.name!r} has no parser")

    @classmethod
    def invert(cls, rule: Any) -> Any:
        """The rule of the reverse edge: `inverse`, unless the op declares itself `one_way`.

        Args:
            rule: a rule of this op (a StateRule or an HparamRule).

        Returns:
            The rule that undoes it.

        Raises:
            NotInvertibleError: the op, or this rule of it, cannot be undone (the message says why).
        """
        if cls.one_way:
            raise NotInvertibleError(f"{rule.source}: {cls.one_way}", rule=rule.source)
        return cls.inverse(rule)

    @classmethod
    def inverse(cls, rule: Any) -> Any:
        """The hook an invertible op overrides (see `invert`); the default refuses.

        Args:
            rule: a rule of this op.

        Returns:
            The rule of the reverse edge.

        Raises:
            NotInvertibleError: this rule of the op cannot be undone.
        """
        raise NotInvertibleError(f"{rule.source}: {cls.kind} {rule.op!r} has no inverse", rule=rule.source)


class StateOp(Op):
    """One state-dict op: parse a `[[rules]]` table, apply the rule to keys, invert it for rollback.

    Hooks run in this order per rule file: `apply_key` for every source key the rule claims (in checkpoint
    order), `apply_group` for keys held with `ApplyContext.group`, `add_keys` for every rule (ops that make
    keys no source key maps to), `check` for every rule (claims to verify on the source)."""

    claims_keys: ClassVar[bool] = True  # rules of this op own the source keys their `match` patterns match

    @classmethod
    def parse(cls, r: dict, rid: str, where: str) -> StateRule:
        """Default: refuse, for ops made only by inverting another (`in_files` False)."""
        raise NotImplementedError(f"op {cls.name!r} cannot be written in a rule file")

    @classmethod
    def apply_key(cls, rule: StateRule, key: str, tensor: TensorRef, ctx: ApplyContext) -> None:
        """Map one source key the rule claims (emit its targets, record an event).

        Called for every key the rule's `match` claims, in checkpoint order; ops that need several keys at
        once call `ctx.group` instead and do the work in `apply_group`.

        Args:
            rule: the rule.
            key: the source key.
            tensor: its tensor (a reference; load it only when the op must compute).
            ctx: the rule file's application, to emit into.

        Raises:
            RuleError: the tensor does not fit the rule.
        """
        raise NotImplementedError(f"op {cls.name!r} claims no keys")

    @classmethod
    def apply_group(cls, rule: StateRule, parts: dict[int, str], ctx: ApplyContext) -> None:
        """Map the keys held together with `ApplyContext.group`, once per group after every key has run.

        Args:
            rule: the rule.
            parts: part index -> source key.
            ctx: the rule file's application (its `state` holds the tensors).

        Raises:
            RuleError: a part is missing or the tensors do not fit the rule.
        """
        raise NotImplementedError(f"op {cls.name!r} holds no groups")

    @classmethod
    def add_keys(cls, rule: StateRule, ctx: ApplyContext) -> None:
        """Add keys that no source key maps to, after every key is mapped. Default: none.

        Args:
            rule: the rule.
            ctx: the rule file's application, to emit into.
        """

    @classmethod
    def check(cls, rule: StateRule, ctx: ApplyContext) -> None:
        """Check the rule's claims about the source once the edge is applied (warn or refuse). Default: none.

        Args:
            rule: the rule.
            ctx: the rule file's application (warnings go to `ctx.warnings`).
        """


class HparamOp(Op):
    """One hyper-parameter op: parse a `[[hparams]]` table, edit the config, invert for rollback."""

    kind = "hparam op"
    records: ClassVar[bool] = False  # the stamp records the key's value before the rule ran (for rollback)
    fields: ClassVar[frozenset[str]] = frozenset({"id", "op", "key"})  # the table fields a rule may have

    @classmethod
    def parse(cls, r: dict, rid: str, where: str) -> HparamRule:
        """Read `key`, check the field names against `fields`, then the op's own fields (`parse_fields`)."""
        rule = HparamRule(rid, cls.name, require(r, "key", where), source=where)
        check_fields(r, cls.fields, where)
        cls.parse_fields(rule, r, where)
        return rule

    @classmethod
    def parse_fields(cls, rule: HparamRule, r: dict, where: str) -> None:
        """Read the op's own fields into `rule` (`parse` has checked the names against `fields`). Default: none.

        Args:
            rule: the rule being built.
            r: its TOML table.
            where: its address for messages.

        Raises:
            RuleError: a field is malformed.
        """

    @classmethod
    def apply(cls, rule: HparamRule, config: dict[str, Any], recorded: dict[str, Any] | None) -> list[str]:
        """Edit `config` in place.

        Args:
            rule: a rule of this op.
            config: the canonical config.
            recorded: the source stamp's record for this rule's forward rule, if any.

        Returns:
            One line per change, for the report.

        Raises:
            RuleError: the rule cannot be applied to this config.
        """
        raise NotImplementedError(f"hparam op {cls.name!r} has no apply")

    @classmethod
    def rollback(cls, rule: HparamRule) -> str:
        """How rolling back over `rule` restores its key when the stamp holds no record (for `history`).

        Args:
            rule: a rule of this op.

        Returns:
            One line for the report.
        """
        return f"{rule.key}: only from the value recorded in the stamp (files this tool migrated); otherwise one-way"


OPS: dict[str, type[StateOp]] = {}
HPARAM_OPS: dict[str, type[HparamOp]] = {}


def _register(registry: dict[str, Any], cls: type[Op]) -> type[Op]:
    if not cls.name or cls.name in registry:
        raise ValueError(f"{cls.kind} name {cls.name!r} is empty or already registered")
    registry[cls.name] = cls
    return cls


def state_op(cls: type[StateOp]) -> type[StateOp]:
    """Class decorator: register a state op under its `name`, so rule files can name it.

    Args:
        cls: the op class.

    Returns:
        `cls`, unchanged.

    Raises:
        ValueError: the name is empty or taken.
    """
    return _register(OPS, cls)


def hparam_op(cls: type[HparamOp]) -> type[HparamOp]:
    """Class decorator: register a hyper-parameter op under its `name`, so rule files can name it.

    Args:
        cls: the op class.

    Returns:
        `cls`, unchanged.

    Raises:
        ValueError: the name is empty or taken.
    """
    return _register(HPARAM_OPS, cls)
