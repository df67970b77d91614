"""Ops that cut one tensor into several keys or join several into one: split, concat (each other's inverse)."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from ...errors import NotInvertibleError, RuleError
from ...io.tensor_ref import TensorRef
from .base import ApplyContext, KeyEvent, StateRule, state_op
from .fields import int_list, require, tensor_misfit
from .invert_regex import invert_rename
from .keyed import MATCH_FIELDS, MatchOp


class _Sized(MatchOp):
    """`dim` and `sizes`, one size per part (the targets of a split, the patterns of a concat)."""

    fields = MATCH_FIELDS | {"dim", "sizes"}

    @classmethod
    def parts(cls, rule: StateRule) -> tuple[int, str]:
        """(how many parts, what a part is called in the message)."""
        raise NotImplementedError

    @classmethod
    def parse_fields(cls, rule: StateRule, r: dict, where: str) -> None:
        super().parse_fields(rule, r, where)
        count, part = cls.parts(rule)
        if len(rule.params["sizes"]) != count:
            raise RuleError(f"{where}: 'sizes' must have one entry per {part}", rule=where)

    @classmethod
    def parse_params(cls, r: dict, where: str) -> dict[str, Any]:
        return {"dim": require(r, "dim", where, int), "sizes": int_list(r, "sizes", where)}


@state_op
class Split(_Sized):
    """`split`: `match`, `to = [..]`, `dim`, `sizes` (one per target). Inverse: `concat`."""

    name = "split"
    many_targets = True

    @classmethod
    def parts(cls, rule: StateRule) -> tuple[int, str]:
        return len(rule.to), "target"

    @classmethod
    def transform(cls, rule: StateRule, key: str, tensor: TensorRef, ctx: ApplyContext) -> list[TensorRef]:
        params = rule.params
        t = tensor.to_torch()
        if sum(params["sizes"]) != t.shape[params["dim"]]:
            raise RuleError(f"split sizes {params['sizes']} do not add up to dim {params['dim']} of shape "
                            f"{list(t.shape)}")
        return [TensorRef.from_torch(p.contiguous()) for p in t.split(params["sizes"], dim=params["dim"])]

    @classmethod
    def inverse(cls, rule: StateRule) -> StateRule:
        try:
            inv = [invert_rename(rule.match[0].pattern, t) for t in rule.to]
            if len({t for _, t in inv}) != 1:
                raise ValueError("split targets map back to different sources")
        except ValueError as exc:
            raise NotInvertibleError(f"{rule.source}: split cannot be inverted ({exc})") from exc
        return replace(rule, op="concat", match=[re.compile(p) for p, _ in inv], to=[inv[0][1]],
                       source=f"{rule.source} (inverse)")


@state_op
class Concat(_Sized):
    """`concat`: `match = [..]` (patterns with the same capture groups), `to`, `dim`, `sizes`. Inverse: `split`.

    Each source key is held until every part of its group (same captures) has been seen."""

    name = "concat"
    many_sources = True

    @classmethod
    def parts(cls, rule: StateRule) -> tuple[int, str]:
        return len(rule.match), "'match' pattern"

    @classmethod
    def apply_key(cls, rule: StateRule, key: str, tensor: TensorRef, ctx: ApplyContext) -> None:
        idx = next(i for i, p in enumerate(rule.match) if p.fullmatch(key))
        ctx.group(rule, rule.match[idx].fullmatch(key).groups(), idx, key)

    @classmethod
    def apply_group(cls, rule: StateRule, parts: dict[int, str], ctx: ApplyContext) -> None:
        import torch

        if len(parts) != len(rule.match):
            missing = [p.pattern for i, p in enumerate(rule.match) if i not in parts]
            raise RuleError(f"{rule.source}: concat is missing parts matching {missing}", rule=rule.source)
        keys = [parts[i] for i in range(len(rule.match))]
        target = rule.match[0].fullmatch(keys[0]).expand(rule.to[0])
        try:
            joined = torch.cat([ctx.state[k].to_torch() for k in keys], dim=rule.params["dim"])
        except (RuntimeError, IndexError) as exc:
            raise tensor_misfit(rule.source, "concat", keys[0], ctx.state[keys[0]].shape, exc) from exc
        ctx.emit(target, TensorRef.from_torch(joined))
        ctx.events.append(KeyEvent(rule.source, "concat", keys, [target]))

    @classmethod
    def inverse(cls, rule: StateRule) -> StateRule:
        try:
            inv = [invert_rename(p.pattern, rule.to[0]) for p in rule.match]
        except ValueError as exc:
            raise NotInvertibleError(f"{rule.source}: concat cannot be inverted ({exc})") from exc
        return replace(rule, op="split", match=[re.compile(inv[0][0])], to=[t for _, t in inv],
                       source=f"{rule.source} (inverse)")
