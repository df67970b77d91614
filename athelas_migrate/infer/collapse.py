"""Collapsing a per-key mapping into few readable rules, and writing them as a rule file.

Renames are grouped by the move they make: `old = A.s`, `new = B.s` with `s` the longest common dotted
suffix, one rule per `(A, B)`; a child of `A` whose whole subtree moves is written `child\\..*`, so a
rule reads as "this subtree moved there". Other ops (and renames inside one module, `gamma -> weight`)
are grouped over numeric indices (`layers.(\\d+).W`) when the group covers every key the pattern
matches. The text is parsed back by the rule engine's own schema before anyone sees it.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from typing import Any

from .match import Entry


def _common_suffix(a: list[str], b: list[str]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.>-]+", "-", text).strip("-") or "root"


def _alternation(mine: list[str], every: list[str]) -> str:
    """A regex body matching exactly `mine` among `every` (relative keys), whole subtrees as `child\\..*`."""
    items: list[str] = []
    for c in OrderedDict.fromkeys(s.split(".")[0] for s in mine):
        m_c = [s for s in mine if s.split(".")[0] == c]
        e_c = [s for s in every if s.split(".")[0] == c]
        if not all("." in s for s in m_c):
            items.extend(re.escape(s) for s in m_c)
        elif set(m_c) == set(e_c):
            items.append(re.escape(c) + r"\..*")
        else:
            sub = _alternation([s.partition(".")[2] for s in m_c], [s.partition(".")[2] for s in e_c if "." in s])
            items.append(re.escape(c) + r"\." + (f"(?:{sub})" if "|" in sub else sub))
    return "|".join(items)


def _move_rule(a: str, b: str, suffixes: list[str], old_keys: list[str]) -> dict:
    under = [k[len(a) + 1:] if a else k for k in old_keys if (k.startswith(a + ".") if a else True)]
    body = ".*" if set(suffixes) == set(under) else _alternation(suffixes, under)
    match = f"^{re.escape(a)}\\.({body})$" if a else f"^({body})$"
    to = f"{b}.\\1" if b else "\\1"
    if a == b:
        rid = "unchanged" if not a else f"keep-{a}"
    else:
        rid = f"{a or 'root'}-to-{b or 'root'}"
    return {"id": _slug(rid), "op": "rename", "match": match, "to": to}


def _generalise(src: str, tgt: str) -> tuple[str, str] | None:
    """(regex, template) with every numeric component a group, when both keys hold the same indices."""
    s_parts, t_parts = src.split("."), tgt.split(".")
    digits = [p for p in s_parts if p.isdigit()]
    if not digits or digits != [p for p in t_parts if p.isdigit()]:
        return None
    pattern = r"\.".join(r"(\d+)" if p.isdigit() else re.escape(p) for p in s_parts)
    out, i = [], 0
    for p in t_parts:
        if p.isdigit():
            i += 1
            out.append(f"\\{i}")
        else:
            out.append(p)
    return "^" + pattern + "$", ".".join(out)


def _indexed_rules(entries: list[Entry], old_keys: list[str]) -> list[tuple[str, dict]]:
    """One rule per op/params/pattern group where the indices generalise; one per key otherwise."""
    groups: OrderedDict[tuple, list[Entry]] = OrderedDict()
    for e in entries:
        gen = _generalise(e.sources[0], e.targets[0])
        key = (e.op, json.dumps(_params(e), sort_keys=True), *gen) if gen else (e.op, e.sources[0], e.targets[0])
        groups.setdefault(key, []).append(e)
    out = []
    for key, members in groups.items():
        first = members[0]
        if len(key) == 4 and len(members) > 1:
            regex = re.compile(key[2])
            matched = {k for k in old_keys if regex.fullmatch(k)}
            if matched == {m.sources[0] for m in members}:
                label = first.sources[0].split(".")
                label = ".".join("N" if p.isdigit() else p for p in label)
                out.append((first.sources[0], {"id": _slug(f"{first.op}-{label}"), "op": first.op, "match": key[2],
                                               "to": key[3], **_params(first)}))
                continue
        for m in members:
            tail = f"-to-{m.targets[0].rpartition('.')[2]}" if m.op == "rename" else ""
            out.append((m.sources[0], {"id": _slug(f"{m.op}-{m.sources[0]}{tail}"), "op": m.op,
                                       "match": "^" + re.escape(m.sources[0]) + "$", "to": m.targets[0],
                                       **_params(m)}))
    return out


def _params(e: Entry) -> dict:
    return {k: v for k, v in e.params.items() if k not in ("reason", "restore")}


def _merge_indexed_moves(moves: OrderedDict[tuple[str, str], list[Entry]],
                         old_keys: list[str]) -> list[tuple[list[Entry], dict]]:
    """Whole-subtree moves that differ only in the same indices (`layers.3.attn -> blocks.3.mixer`)
    become one rule, when its pattern matches nothing else."""
    plain: list[tuple[list[Entry], dict]] = []
    indexed: OrderedDict[tuple[str, str], list[tuple[list[Entry], dict]]] = OrderedDict()
    for (a, b), members in moves.items():
        suffixes = [e.sources[0][len(a) + 1:] if a else e.sources[0] for e in members]
        rule = _move_rule(a, b, suffixes, old_keys)
        gen = _generalise(a, b) if a and rule["match"].endswith(r"\.(.*)$") else None
        if gen:
            indexed.setdefault(gen, []).append((members, rule))
        else:
            plain.append((members, rule))
    for (pattern, template), group in indexed.items():
        if len(group) > 1:
            groups = template.count("\\") + 1
            regex = pattern[:-1] + r"\.(.*)$"
            covered = {e.sources[0] for members, _ in group for e in members}
            if {k for k in old_keys if re.fullmatch(regex, k)} == covered:
                rid = re.sub(r"(?<=\.)\d+(?=[.-]|$)", "N", group[0][1]["id"])  # layers.0-to-blocks.0 -> .N
                plain.append(([e for members, _ in group for e in members],
                              {"id": rid, "op": "rename", "match": regex, "to": f"{template}.\\{groups}"}))
                continue
        plain.extend(group)
    return plain


def build_rules(entries: list[Entry], old_keys: list[str]) -> list[tuple[dict, list[int]]]:
    """Rule dicts in source-key order, each with the units (evidence) behind it.

    Args:
        entries: the accepted mapping (match.Matcher.entries) plus the inferred drops.
        old_keys: the old state dict's keys, in order (rules follow it; patterns must cover exactly).

    Returns:
        (rule dict as the rule schema reads it, indices of the units behind it) per rule.
    """
    rank = {k: i for i, k in enumerate(old_keys)}
    moves: OrderedDict[tuple[str, str], list[Entry]] = OrderedDict()
    indexed, other = [], []
    for e in entries:
        if e.op == "rename":
            a, b = e.sources[0].split("."), e.targets[0].split(".")
            n = _common_suffix(a, b)
            if n:
                moves.setdefault((".".join(a[:len(a) - n]), ".".join(b[:len(b) - n])), []).append(e)
                continue
            indexed.append(e)
        elif e.op in ("transpose", "reshape", "cast"):
            indexed.append(e)
        else:
            other.append(e)
    rules: list[tuple[str, dict, list[int]]] = []
    for members, rule in _merge_indexed_moves(moves, old_keys):
        first = min(members, key=lambda e: rank[e.sources[0]]).sources[0]
        rules.append((first, rule, sorted({e.unit for e in members})))
    for first, rule in _indexed_rules(indexed, old_keys):
        units = sorted({e.unit for e in indexed if re.fullmatch(rule["match"], e.sources[0])})
        rules.append((first, rule, units))
    for e in other:
        if e.op == "drop":
            rule = {"id": _slug(f"drop-{e.sources[0]}"), "op": "drop", "match": "^" + re.escape(e.sources[0]) + "$",
                    "reason": e.params["reason"]}
            if e.params.get("restore"):
                rule["restore"] = e.params["restore"]
        elif e.op == "split":
            rule = {"id": _slug(f"split-{e.sources[0]}"), "op": "split", "match": "^" + re.escape(e.sources[0]) + "$",
                    "to": list(e.targets), **_params(e)}
        else:  # concat
            rule = {"id": _slug(f"concat-to-{e.targets[0]}"), "op": "concat",
                    "match": ["^" + re.escape(s) + "$" for s in e.sources], "to": e.targets[0], **_params(e)}
        rules.append((min(e.sources, key=rank.__getitem__), rule, [e.unit]))
    rules.sort(key=lambda r: rank[r[0]])
    seen: dict[str, int] = {}
    out = []
    for _, rule, units in rules:
        base = rule["id"]
        seen[base] = seen.get(base, 0) + 1
        if seen[base] > 1:
            rule["id"] = f"{base}-{seen[base]}"
        out.append((rule, units))
    return out


# ---------------------------------------------------------------------------------------------- TOML text
def toml_value(value: Any) -> str:
    """`value` as a TOML literal (literal strings where possible, so regexes stay readable).

    Args:
        value: a bool, number, string, or a list or dict of them.

    Returns:
        The TOML text.

    Raises:
        TypeError: a value TOML cannot hold here.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        if "'" not in value and "\n" not in value:
            return f"'{value}'"
        return json.dumps(value)  # a TOML basic string is JSON-compatible for these characters
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def to_toml(family: str, src: str, dst: str, description: str, rules: list[tuple[dict, list[str]]],
            header: list[str]) -> str:
    """The rule file text: header comments, then each rule with its evidence as comments.

    Args:
        family: the family name.
        src: the edge's source version.
        dst: the edge's target version.
        description: the rule file's description.
        rules: (rule dict, evidence lines) pairs.
        header: comment lines at the top (provenance, proof).

    Returns:
        The TOML text, newline-terminated.
    """
    lines = [f"# {h}" for h in header]
    lines += [f"family = {toml_value(family)}", f"from = {toml_value(src)}", f"to = {toml_value(dst)}",
              f"description = {toml_value(description)}"]
    for rule, notes in rules:
        lines.append("")
        lines += [f"# {n}" for n in notes]
        lines.append("[[rules]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in rule.items()]
    return "\n".join(lines) + "\n"
