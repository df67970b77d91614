"""`create`: a constant tensor the target adds (e.g. a loss-weight buffer of ones); it matches no source key.

Its inverse is a `drop` that checks the key still holds the constant (`check_fill`)."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from ...errors import RuleError
from ...io.tensor_ref import TensorRef
from .base import ApplyContext, KeyEvent, StateOp, StateRule, state_op
from .fields import check_fields, dtype_name, is_shape, require, resolve_shape

_FIELDS = frozenset({"id", "op", "to", "fill", "shape", "dtype", "reason"})


def _float_dtype(produced: dict[str, TensorRef]) -> str:
    from ...io.tensor_ref import FLOAT_DTYPES

    return next((t.dtype for t in produced.values() if t.dtype in FLOAT_DTYPES), "float32")


def add_constant(rule: StateRule, key: str, params: dict[str, Any], ctx: ApplyContext, op: str = "create") -> None:
    """Add a constant tensor (`fill` everywhere) under `key`, in the model's floating dtype unless stated.

    Args:
        rule: the rule adding it (for messages and the event).
        key: the key to add.
        params: `fill`, `shape` (ints or config keys), optional `dtype`.
        ctx: the edge being applied.
        op: the op named in the event ("create", or "restore" for a drop's constant restore).

    Raises:
        RuleError: the key exists, the shape cannot be resolved, or the fill does not fit the dtype.
    """
    if key in ctx.produced:
        raise RuleError(f"{rule.source}: {op}d key {key} already exists", rule=rule.source)
    shape = resolve_shape(params["shape"], ctx.config, rule.source)
    dtype = params.get("dtype") or _float_dtype(ctx.produced)
    try:
        ctx.produced[key] = TensorRef.full(shape, params["fill"], dtype)
    except ValueError as exc:
        raise RuleError(f"{rule.source}: {exc}", rule=rule.source) from exc
    ctx.events.append(KeyEvent(rule.source, op, [], [key], rule.reason))


def check_constant(rule: StateRule, key: str, tensor: TensorRef) -> list[str]:
    """The inverse of `create` drops a key the forward edge made; say so when it no longer holds the constant.

    A key trained away from its created constant carries information the older layout cannot keep.

    Args:
        rule: the inverse rule (its params hold `check_fill`).
        key: the key being dropped.
        tensor: its tensor.

    Returns:
        One warning when the key no longer holds the constant (an empty tensor counts as not holding it), else
        none.
    """
    fill = rule.params["check_fill"]
    if tensor.numel and tensor.holds_constant(fill):
        return []
    values = tensor.to_torch().flatten()[:6].tolist()
    return [f"{rule.source}: {key} no longer holds the constant {fill} that the forward edge created "
            f"(values {values}); the older layout has no place for it, so it is dropped"]


@state_op
class Create(StateOp):
    """`create`: `to` (one key), `fill`, `shape` (ints or config keys), `reason`, optional `dtype`."""

    name = "create"
    claims_keys = False

    @classmethod
    def parse(cls, r: dict, rid: str, where: str) -> StateRule:
        check_fields(r, _FIELDS, where)
        to = require(r, "to", where)
        fill = r.get("fill")
        if not isinstance(fill, int | float) or isinstance(fill, bool):
            raise RuleError(f"{where}: 'fill' must be a number", rule=where)
        if not is_shape(r.get("shape")):
            raise RuleError(f"{where}: 'shape' must be a list of ints or config keys", rule=where)
        dtype = r.get("dtype")
        if dtype is not None:
            dtype_name(dtype, where)
        return StateRule(rid, "create", [], [to], {"fill": fill, "shape": list(r["shape"]), "dtype": dtype},
                         reason=require(r, "reason", where), source=where)

    @classmethod
    def add_keys(cls, rule: StateRule, ctx: ApplyContext) -> None:
        add_constant(rule, rule.to[0], rule.params, ctx)

    @classmethod
    def inverse(cls, rule: StateRule) -> StateRule:
        key = rule.to[0]
        return replace(rule, op="drop", match=[re.compile("^" + re.escape(key) + "$")], to=[],
                       params={"check_fill": rule.params["fill"]}, restore=None,
                       reason=f"undoing a create ({rule.reason})", source=f"{rule.source} (inverse)")
