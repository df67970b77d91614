"""Classifier-head ops between a one-logit sigmoid head and a two-logit softmax head: widen_head, narrow_head."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from ...errors import RuleError
from ...io.tensor_ref import TensorRef
from .base import ApplyContext, StateRule, state_op
from .keyed import MatchOp, invert_key_map


def head_op(rule: Any, key: str, tensor: TensorRef) -> tuple[TensorRef, str]:
    """A head tensor widened or narrowed, and a warning ("" when none).

    widen_head: `[1, ...]` -> `[0 ; w]` (logit 0 is exactly 0, so softmax[:, 1] = sigmoid(z)), a byte copy;
    narrow_head: `[2, ...]` -> `w1 - w0` (the same decision function, `sigmoid(z1 - z0)`, with one logit).

    Args:
        rule: the rule (its `op` and `source` are read).
        key: the source key, for messages.
        tensor: the head's weight or bias.

    Returns:
        (the new tensor, a warning or "").

    Raises:
        RuleError: the tensor does not have the row count the op needs.
    """
    if rule.op == "widen_head":
        if not tensor.shape or tensor.shape[0] != 1:
            raise RuleError(f"{rule.source}: widen_head needs a one-row head, {key} is {list(tensor.shape)}",
                            rule=rule.source)
        zero_row = bytes(tensor.nbytes)  # +0.0 is all zero bits in every float format
        return TensorRef.from_bytes(zero_row + bytes(tensor.raw_bytes()), tensor.dtype,
                                    (2, *tensor.shape[1:]), tensor.is_parameter), ""

    t = tensor.to_torch()
    if t.dim() == 0 or t.shape[0] != 2:
        raise RuleError(f"{rule.source}: narrow_head needs a two-row head, {key} is {list(t.shape)}", rule=rule.source)
    note = ""
    if bool((t[0] != 0).any()):
        note = (f"{rule.source}: row 0 of {key} is not zero (trained after the migration): the one-row head is "
                "w1 - w0, the same function (sigmoid(z1 - z0) = softmax[:, 1], up to float rounding), "
                "not a copy of the file it was migrated from")
    return TensorRef.from_torch((t[1:] - t[:1]).contiguous(), tensor.is_parameter), note


class _HeadOp(MatchOp):
    @classmethod
    def transform(cls, rule: StateRule, key: str, tensor: TensorRef, ctx: ApplyContext) -> list[TensorRef]:
        out, note = head_op(rule, key, tensor)
        ctx.warnings += [note] if note else []
        return [out]


@state_op
class WidenHead(_HeadOp):
    """`widen_head`: `match`, `to`; a `[1, ...]` head gets a zero row 0. Inverse: `narrow_head`."""

    name = "widen_head"

    @classmethod
    def inverse(cls, rule: StateRule) -> StateRule:
        pattern, template = invert_key_map(rule)
        return replace(rule, op="narrow_head", match=[re.compile(pattern)], to=[template],
                       source=f"{rule.source} (inverse)")


@state_op
class NarrowHead(_HeadOp):
    """`narrow_head`: `match`, `to`; row 1 minus row 0 of a `[2, ...]` head. Lossy."""

    name = "narrow_head"
    one_way = "narrow_head keeps only the row difference; the two rows cannot be rebuilt from it"
