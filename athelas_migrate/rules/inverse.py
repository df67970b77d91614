"""Inverses of rule files, for rollback. A rule without an exact inverse says why."""

from __future__ import annotations

import re
from dataclasses import replace

from ..errors import NotInvertibleError
from .schema import _CAST_INVERTIBLE, HparamRule, RuleFile, StateRule

_META = set(".^$*+?{}[]|()")


def _tokens(pattern: str) -> list[tuple[str, str]]:
    """Split an anchored regex into ('lit', text) and ('group', subpattern); refuse anything else."""
    body = pattern
    if body.startswith("^"):
        body = body[1:]
    if body.endswith("$") and not body.endswith("\\$"):
        body = body[:-1]
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\":
            if i + 1 >= len(body) or body[i + 1].isalnum():
                raise ValueError(f"escape {body[i:i + 2]!r} outside a group")
            out.append(("lit", body[i + 1]))
            i += 2
        elif c == "(":
            depth, j = 0, i
            while j < len(body):
                if body[j] == "\\":
                    j += 2
                    continue
                if body[j] == "(":
                    depth += 1
                elif body[j] == ")":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            sub = body[i + 1 : j]
            if sub.startswith("?"):
                raise ValueError("special groups are not invertible")
            if re.compile(sub).groups:
                raise ValueError("nested capture groups are not invertible")
            out.append(("group", sub))
            i = j + 1
        elif c in _META:
            raise ValueError(f"regex operator {c!r} outside a group")
        else:
            out.append(("lit", c))
            i += 1
    return out


_REF = re.compile(r"\\(\d+)|\\g<(\d+)>")


def invert_rename(pattern: str, template: str) -> tuple[str, str]:
    """(inverse regex, inverse template) for a rename whose regex is literals plus capture groups."""
    toks = _tokens(pattern)
    groups = [sub for kind, sub in toks if kind == "group"]
    parts, pos, order = [], 0, []
    for m in _REF.finditer(template):
        parts.append(re.escape(template[pos : m.start()]))
        n = int(m.group(1) or m.group(2))
        if not 1 <= n <= len(groups) or n in order:
            raise ValueError(f"group \\{n} used twice or does not exist")
        order.append(n)
        parts.append(f"({groups[n - 1]})")
        pos = m.end()
    parts.append(re.escape(template[pos:]))
    if sorted(order) != list(range(1, len(groups) + 1)):
        raise ValueError("the target does not use every captured group, so the source cannot be rebuilt")
    inv_template, g = [], 0
    for kind, sub in toks:
        if kind == "lit":
            inv_template.append(sub.replace("\\", "\\\\"))
        else:
            g += 1
            inv_template.append(f"\\g<{order.index(g) + 1}>")
    return "^" + "".join(parts) + "$", "".join(inv_template)


def invert_state_rule(rule: StateRule) -> StateRule:
    where = rule.source
    if rule.op == "create":
        key = rule.to[0]
        return replace(rule, op="drop", match=[re.compile("^" + re.escape(key) + "$")], to=[],
                       params={"check_fill": rule.params["fill"]}, restore=None,
                       reason=f"undoing a create ({rule.reason})", source=f"{where} (inverse)")
    if rule.op == "narrow_head":
        raise NotInvertibleError(f"{where}: narrow_head keeps only the row difference; the two rows cannot be "
                                 "rebuilt from it")
    if rule.op in ("rename", "transpose", "reshape", "cast", "widen_head"):
        try:
            pattern, template = invert_rename(rule.match[0].pattern, rule.to[0])
        except ValueError as exc:
            raise NotInvertibleError(f"{where}: rename cannot be inverted ({exc})") from exc
        params = dict(rule.params)
        if rule.op == "widen_head":
            return replace(rule, op="narrow_head", match=[re.compile(pattern)], to=[template],
                           source=f"{where} (inverse)")
        if rule.op == "reshape":
            if "from_shape" not in rule.params:
                raise NotInvertibleError(f"{where}: reshape without 'from_shape' cannot be undone")
            params = {"shape": rule.params["from_shape"], "from_shape": rule.params["shape"]}
        if rule.op == "cast":
            src = rule.params.get("from_dtype")
            if (src, rule.params["dtype"]) not in _CAST_INVERTIBLE:
                raise NotInvertibleError(f"{where}: cast {src} -> {rule.params['dtype']} loses information")
            params = {"dtype": src, "from_dtype": rule.params["dtype"]}
        return replace(rule, match=[re.compile(pattern)], to=[template], params=params, source=f"{where} (inverse)")
    if rule.op == "drop":
        if rule.restore is None:
            raise NotInvertibleError(f"{where}: drops keys ({rule.reason}) and states no way to restore them")
        return replace(rule, op="restore", source=f"{where} (inverse)")
    if rule.op in ("split", "concat"):
        try:
            if rule.op == "split":
                inv = [invert_rename(rule.match[0].pattern, t) for t in rule.to]
                if len({t for _, t in inv}) != 1:
                    raise ValueError("split targets map back to different sources")
                return replace(rule, op="concat", match=[re.compile(p) for p, _ in inv], to=[inv[0][1]],
                               source=f"{where} (inverse)")
            inv = [invert_rename(p.pattern, rule.to[0]) for p in rule.match]
            return replace(rule, op="split", match=[re.compile(inv[0][0])], to=[t for _, t in inv],
                           source=f"{where} (inverse)")
        except ValueError as exc:
            raise NotInvertibleError(f"{where}: {rule.op} cannot be inverted ({exc})") from exc
    raise NotInvertibleError(f"{where}: op {rule.op!r} has no inverse")


def invert_hparam_rule(rule: HparamRule) -> HparamRule:
    """`set` and `drop` invert to `restore`: the value recorded in the stamp when the forward edge ran, else
    the rule file's statement (see `apply_hparam_rules`)."""
    if rule.op == "rename":
        return replace(rule, key=rule.to, to=rule.key, source=f"{rule.source} (inverse)")
    return replace(rule, op="restore", forward=rule.source, source=f"{rule.source} (inverse)")


def hparam_rollback(rule: HparamRule) -> str:
    """How rolling back over `rule` restores its key when the checkpoint's stamp holds no record (`history`)."""
    if rule.op == "rename":
        return f"{rule.to} renamed back to {rule.key}"
    if rule.op == "set" and rule.has_previous:
        return f"{rule.key}: the recorded previous value, else {rule.previous!r} (rule file)"
    if rule.op == "set" and rule.if_missing:
        return f"{rule.key}: the recorded previous value, else removed (the set only adds a missing key)"
    if rule.op == "drop" and rule.has_value:
        return f"{rule.key}: the recorded value, else {rule.value!r} (rule file)"
    return f"{rule.key}: only from the value recorded in the stamp (files this tool migrated); otherwise one-way"


def invert_file(rf: RuleFile) -> RuleFile:
    """The rule file for the reverse edge; raises NotInvertibleError naming the first blocking rule."""
    return replace(
        rf,
        source_version=rf.target_version,
        target_version=rf.source_version,
        rules=[invert_state_rule(r) for r in rf.rules],
        hparams=[invert_hparam_rule(r) for r in reversed(rf.hparams)],
        name=f"{rf.name} (inverse)",
    )
