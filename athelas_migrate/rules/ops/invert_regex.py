"""Inverting a key rename: from `(regex, template)` to the regex and template that map the targets back.

Only regexes made of literals and plain capture groups invert; anything else raises ValueError, which the op
turns into a NotInvertibleError naming the rule."""

from __future__ import annotations

import re

_META = set(".^$*+?{}[]|()")
_REF = re.compile(r"\\(\d+)|\\g<(\d+)>")


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


def invert_rename(pattern: str, template: str) -> tuple[str, str]:
    """The inverse of a rename whose regex is literals plus capture groups.

    Args:
        pattern: the forward regex (anchored or not).
        template: the forward target template (`\\1`, `\\g<1>`).

    Returns:
        (inverse regex, inverse template).

    Raises:
        ValueError: the regex has operators outside groups, or the template does not use every group once.
    """
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
