"""Ops that map each source key their `match` regex claims to one target key: rename, transpose, reshape, cast.

`MatchOp` is the base of every op that claims keys by regex (also split, concat, drop, the head ops): it parses
`match`, checks the fields, reads `to` and hands the op-specific fields to `parse_params`. A one-key op then
only says how the tensor changes (`transform`) and how its params invert (`inverse_params`).
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any, ClassVar

from ...errors import NotInvertibleError, RuleError
from ...io.tensor_ref import TensorRef
from .base import ApplyContext, KeyEvent, StateOp, StateRule, state_op
from .fields import (
    CASTABLE,
    check_fields,
    check_template,
    compile_pattern,
    dtype_name,
    int_list,
    require,
    str_list,
    tensor_misfit,
)
from .invert_regex import invert_rename

MATCH_FIELDS = frozenset({"id", "op", "match", "to", "reason"})  # `reason`: a note for reviewers on any rule
WIDENING = frozenset({("float16", "float32"), ("float16", "float64"), ("bfloat16", "float32"),
                      ("bfloat16", "float64"), ("float32", "float64"), ("int32", "int64"), ("int16", "int64"),
                      ("int8", "int64"), ("int16", "int32"), ("int8", "int32"), ("uint8", "int64"),
                      ("int8", "int16")})


class MatchOp(StateOp):
    """An op whose rules claim the source keys their `match` regex matches, mapped to `to` templates."""

    fields: ClassVar[frozenset[str]] = MATCH_FIELDS  # the table fields a rule of this op may have
    many_sources: ClassVar[bool] = False  # `match` may list several patterns (parts of one target)
    many_targets: ClassVar[bool] = False  # `to` is a list (one source key, several targets)

    @classmethod
    def parse(cls, r: dict, rid: str, where: str) -> StateRule:
        patterns = str_list(r, "match")
        if not patterns:
            raise RuleError(f"{where}: 'match' must be a regex or a list of regexes", rule=where)
        if not cls.many_sources and len(patterns) != 1:
            raise RuleError(f"{where}: only 'concat' takes several 'match' patterns", rule=where)
        rule = StateRule(rid, cls.name, [compile_pattern(p, where) for p in patterns], source=where)
        check_fields(r, cls.fields, where)
        cls.parse_fields(rule, r, where)
        return rule

    @classmethod
    def parse_fields(cls, rule: StateRule, r: dict, where: str) -> None:
        """Read `to` (one template, a list for an op with many targets), then the op's params (`parse_params`).

        Templates are checked against the first pattern here, so a bad group reference fails when the file
        loads, not midway through a checkpoint.

        Args:
            rule: the rule being built (its `match` already compiled).
            r: its TOML table.
            where: its address for messages.

        Raises:
            RuleError: `to` is missing, has the wrong arity for the op, or names a group `match` lacks.
        """
        to = str_list(r, "to")
        if to is None:
            raise RuleError(f"{where}: 'to' must be a key template or a list of them", rule=where)
        rule.to = to
        if not rule.to:
            raise RuleError(f"{where}: missing field 'to'", rule=where)
        if cls.many_targets != (len(rule.to) > 1):
            raise RuleError(f"{where}: 'split' needs a list of targets; other ops take one", rule=where)
        for template in rule.to:
            check_template(rule.match[0], template, where)
        rule.params.update(cls.parse_params(r, where))

    @classmethod
    def parse_params(cls, r: dict, where: str) -> dict[str, Any]:
        """The op's own fields, validated. Default: none.

        Args:
            r: the rule's TOML table.
            where: its address for messages.

        Returns:
            The params to store on the rule.

        Raises:
            RuleError: a field is missing or malformed.
        """
        return {}

    @classmethod
    def apply_key(cls, rule: StateRule, key: str, tensor: TensorRef, ctx: ApplyContext) -> None:
        m = rule.match[0].fullmatch(key)
        targets = [m.expand(t) for t in rule.to]
        try:
            outs = cls.transform(rule, key, tensor, ctx)
        except (RuntimeError, IndexError) as exc:  # torch: the params do not fit this tensor's shape
            raise tensor_misfit(rule.source, rule.op, key, tensor.shape, exc) from exc
        for target, out in zip(targets, outs):
            ctx.emit(target, out)
        ctx.events.append(KeyEvent(rule.source, rule.op, [key], targets))

    @classmethod
    def transform(cls, rule: StateRule, key: str, tensor: TensorRef, ctx: ApplyContext) -> list[TensorRef]:
        """The tensors for the rule's targets, in order. Default: the source tensor itself (a byte copy).

        A torch RuntimeError or IndexError raised here is reported as the rule not fitting the tensor.

        Args:
            rule: the rule.
            key: the source key.
            tensor: its tensor.
            ctx: the rule file's application (for the config, when a param names a config key).

        Returns:
            One tensor per `rule.to` template.
        """
        return [tensor]

    @classmethod
    def inverse(cls, rule: StateRule) -> StateRule:
        pattern, template = invert_key_map(rule)
        return replace(rule, match=[re.compile(pattern)], to=[template], params=cls.inverse_params(rule),
                       source=f"{rule.source} (inverse)")

    @classmethod
    def inverse_params(cls, rule: StateRule) -> dict[str, Any]:
        """The params of the inverse rule. Default: the same.

        Args:
            rule: the forward rule.

        Returns:
            The inverse rule's params.

        Raises:
            NotInvertibleError: the params say the change is lossy.
        """
        return dict(rule.params)


def invert_key_map(rule: StateRule) -> tuple[str, str]:
    """(regex, template) mapping the rule's targets back to its sources.

    Args:
        rule: a one-pattern, one-target rule.

    Returns:
        The inverse's regex and target template.

    Raises:
        NotInvertibleError: the regex is not literals plus capture groups each used once.
    """
    try:
        return invert_rename(rule.match[0].pattern, rule.to[0])
    except ValueError as exc:
        raise NotInvertibleError(f"{rule.source}: rename cannot be inverted ({exc})") from exc


def _torch_result(out: Any, like: TensorRef) -> list[TensorRef]:
    return [TensorRef.from_torch(out, like.is_parameter)]


@state_op
class Rename(MatchOp):
    """`rename`: `match` (regex), `to` (template): the tensor moves unchanged."""

    name = "rename"


@state_op
class Transpose(MatchOp):
    """`transpose`: `match`, `to`, `dims = [a, b]`; its own inverse."""

    name = "transpose"
    fields = MATCH_FIELDS | {"dims"}

    @classmethod
    def parse_params(cls, r: dict, where: str) -> dict[str, Any]:
        dims = require(r, "dims", where, list)
        if len(dims) != 2 or not all(isinstance(d, int) for d in dims):
            raise RuleError(f"{where}: 'dims' must be two integers", rule=where)
        return {"dims": dims}

    @classmethod
    def transform(cls, rule: StateRule, key: str, tensor: TensorRef, ctx: ApplyContext) -> list[TensorRef]:
        return _torch_result(tensor.to_torch().transpose(*rule.params["dims"]).contiguous(), tensor)


@state_op
class Reshape(MatchOp):
    """`reshape`: `match`, `to`, `shape`, optional `from_shape` (needed to invert)."""

    name = "reshape"
    fields = MATCH_FIELDS | {"shape", "from_shape"}

    @classmethod
    def parse_params(cls, r: dict, where: str) -> dict[str, Any]:
        params = {"shape": int_list(r, "shape", where)}
        if "from_shape" in r:
            params["from_shape"] = int_list(r, "from_shape", where)
        return params

    @classmethod
    def transform(cls, rule: StateRule, key: str, tensor: TensorRef, ctx: ApplyContext) -> list[TensorRef]:
        return _torch_result(tensor.to_torch().reshape(rule.params["shape"]), tensor)

    @classmethod
    def inverse_params(cls, rule: StateRule) -> dict[str, Any]:
        if "from_shape" not in rule.params:
            raise NotInvertibleError(f"{rule.source}: reshape without 'from_shape' cannot be undone")
        return {"shape": rule.params["from_shape"], "from_shape": rule.params["shape"]}


@state_op
class Cast(MatchOp):
    """`cast`: `match`, `to`, `dtype`, optional `from_dtype`; only widening casts invert."""

    name = "cast"
    fields = MATCH_FIELDS | {"dtype", "from_dtype"}

    @classmethod
    def parse_params(cls, r: dict, where: str) -> dict[str, Any]:
        params = {"dtype": require(r, "dtype", where)}
        if params["dtype"] not in CASTABLE:
            raise RuleError(f"{where}: cannot cast to {params['dtype']!r}", rule=where)
        if "from_dtype" in r:
            params["from_dtype"] = dtype_name(r["from_dtype"], where)
        return params

    @classmethod
    def transform(cls, rule: StateRule, key: str, tensor: TensorRef, ctx: ApplyContext) -> list[TensorRef]:
        import torch

        return _torch_result(tensor.to_torch().to(getattr(torch, rule.params["dtype"])), tensor)

    @classmethod
    def inverse_params(cls, rule: StateRule) -> dict[str, Any]:
        src = rule.params.get("from_dtype")
        if (src, rule.params["dtype"]) not in WIDENING:
            raise NotInvertibleError(f"{rule.source}: cast {src} -> {rule.params['dtype']} loses information")
        return {"dtype": src, "from_dtype": rule.params["dtype"]}
