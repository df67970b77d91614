"""Rule files: one TOML file per family and version edge, data only.

A file states `family`, `from`, `to`, and ordered `[[rules]]` (state-dict keys)
and `[[hparams]]` (hyper-parameter edits). State rules:

| op | fields | inverse |
|---|---|---|
| `rename` | `match` (regex), `to` (template, `\\1` or `\\g<name>`) | rename back (derived from the regex) |
| `drop` | `match`, `reason`, optional `restore = {anchor, key, value = "copy" or "arange", ...}` | restore |
| `transpose` | `match`, `to`, `dims = [a, b]` | transpose back |
| `reshape` | `match`, `to`, `shape`, optional `from_shape` | reshape to `from_shape` |
| `cast` | `match`, `to`, `dtype`, optional `from_dtype` | cast back when lossless |
| `split` | `match`, `to = [..]`, `dim`, `sizes` | concat |
| `concat` | `match = [..]` (same groups), `to`, `dim`, `sizes` | split |
| `create` | `to` (one key), `fill`, `shape` (ints or config keys), `reason`, optional `dtype` | drop, checked |
| `widen_head` | `match`, `to` (a `[1, ...]` head gets a zero row 0) | `narrow_head` |
| `narrow_head` | `match`, `to` (row 1 minus row 0 of a `[2, ...]` head) | none (lossy) |

A drop's `restore` may also be `{key, value = "fill", fill, shape}` (no anchor): rollback
recreates the key as a constant tensor (for dead weights the source model never read).

Hyper-parameter rules: `set` (`key`, `value`, `if_missing`, optional `previous`), `rename` (`key`, `to`),
`drop` (`key`, `reason`, optional `value` restored on rollback). A `set` or `drop` records the value it
replaces in the output's stamp (provenance `hparams_before`), and rollback restores exactly that; without a
record rollback uses `previous` / `value`, or drops a key an `if_missing` set added, or refuses.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RuleError

STATE_OPS = {"rename", "drop", "transpose", "reshape", "cast", "split", "concat", "create", "widen_head",
             "narrow_head"}
HPARAM_OPS = {"set", "rename", "drop"}
_CASTABLE = {"float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool"}
_WIDENING = {("float16", "float32"), ("float16", "float64"), ("bfloat16", "float32"), ("bfloat16", "float64"),
             ("float32", "float64"), ("int32", "int64"), ("int16", "int64"), ("int8", "int64"), ("int16", "int32"),
             ("int8", "int32"), ("uint8", "int64"), ("int8", "int16")}


@dataclass
class StateRule:
    id: str
    op: str
    match: list[re.Pattern[str]]
    to: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    restore: dict[str, Any] | None = None
    source: str = ""  # "<file>#<id>", for reports

    def matches(self, key: str) -> bool:
        return any(p.fullmatch(key) for p in self.match)


@dataclass
class HparamRule:
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
class RuleFile:
    path: str
    name: str  # path relative to the mappings root, for reports
    family: str
    source_version: str
    target_version: str
    description: str
    rules: list[StateRule]
    hparams: list[HparamRule]
    digest: str

    @property
    def edge(self) -> tuple[str, str]:
        return self.source_version, self.target_version


def _require(d: dict, key: str, where: str, kind: type | tuple = str) -> Any:
    if key not in d:
        raise RuleError(f"{where}: missing field {key!r}")
    if not isinstance(d[key], kind):
        raise RuleError(f"{where}: field {key!r} must be {getattr(kind, '__name__', kind)}")
    return d[key]


def _compile(pattern: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise RuleError(f"{where}: invalid regex {pattern!r}: {exc}") from exc


def parse_rule_file(path: Path, name: str) -> RuleFile:
    return parse_rule_bytes(path.read_bytes(), name, str(path))


def parse_rule_bytes(raw: bytes, name: str, path: str = "<text>") -> RuleFile:
    """A rule file from its bytes: for rules that live outside the mappings tree (inferred drafts, tests)."""
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RuleError(f"{name}: not valid TOML: {exc}") from exc
    family = _require(data, "family", name)
    src, dst = _require(data, "from", name), _require(data, "to", name)
    allowed = {"family", "from", "to", "description", "rules", "hparams"}
    if set(data) - allowed:
        raise RuleError(f"{name}: unknown top-level fields {sorted(set(data) - allowed)}")
    ids: set[str] = set()
    rules = [_parse_state_rule(r, f"{name} rule {i}", name, ids) for i, r in enumerate(data.get("rules", []))]
    hparams = [_parse_hparam_rule(r, f"{name} hparam {i}", name, ids) for i, r in enumerate(data.get("hparams", []))]
    return RuleFile(path, name, family, src, dst, data.get("description", ""), rules, hparams,
                    hashlib.sha256(raw).hexdigest())


def _parse_state_rule(r: dict, where: str, name: str, ids: set[str]) -> StateRule:
    rid = _require(r, "id", where)
    where = f"{name}#{rid}"
    if rid in ids:
        raise RuleError(f"{where}: duplicate rule id")
    ids.add(rid)
    op = _require(r, "op", where)
    if op not in STATE_OPS:
        raise RuleError(f"{where}: unknown op {op!r} (one of {sorted(STATE_OPS)})")
    if op == "create":
        return _parse_create(r, rid, where)
    patterns = r.get("match")
    patterns = [patterns] if isinstance(patterns, str) else patterns
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise RuleError(f"{where}: 'match' must be a regex or a list of regexes")
    if op != "concat" and len(patterns) != 1:
        raise RuleError(f"{where}: only 'concat' takes several 'match' patterns")
    rule = StateRule(rid, op, [_compile(p, where) for p in patterns], source=where)
    known = {"id", "op", "match", "to", "reason", "restore", "dims", "shape", "from_shape", "dtype", "from_dtype",
             "dim", "sizes"}
    if set(r) - known:
        raise RuleError(f"{where}: unknown fields {sorted(set(r) - known)}")
    if op == "drop":
        rule.reason = _require(r, "reason", where)
        if "restore" in r:
            rule.restore = _require(r, "restore", where, dict)
            value = rule.restore.get("value", "copy")
            if value == "fill":
                if "key" not in rule.restore or not isinstance(rule.restore.get("fill"), int | float) or \
                        not _is_shape(rule.restore.get("shape")):
                    raise RuleError(f"{where}: restore with value = \"fill\" needs 'key', a number 'fill' and "
                                    "'shape' (ints or config keys)")
            elif not {"anchor", "key"} <= set(rule.restore) or value not in ("copy", "arange"):
                raise RuleError(f"{where}: restore needs 'anchor' (regex), 'key' (template) and "
                                "'value' = \"copy\" or \"arange\"")
            else:
                _compile(rule.restore["anchor"], where)
            extra = set(rule.restore) - {"anchor", "key", "value", "dim", "shape", "dtype", "when", "strict", "fill"}
            if extra:
                raise RuleError(f"{where}: unknown restore fields {sorted(extra)}")
        return rule
    to = r.get("to")
    rule.to = [to] if isinstance(to, str) else list(to or [])
    if not rule.to or not all(isinstance(t, str) for t in rule.to):
        raise RuleError(f"{where}: missing field 'to'")
    if (op == "split") != (len(rule.to) > 1):
        raise RuleError(f"{where}: 'split' needs a list of targets; other ops take one")
    if op == "transpose":
        dims = _require(r, "dims", where, list)
        if len(dims) != 2 or not all(isinstance(d, int) for d in dims):
            raise RuleError(f"{where}: 'dims' must be two integers")
        rule.params["dims"] = dims
    elif op == "reshape":
        rule.params["shape"] = _require(r, "shape", where, list)
        if "from_shape" in r:
            rule.params["from_shape"] = _require(r, "from_shape", where, list)
    elif op == "cast":
        rule.params["dtype"] = _require(r, "dtype", where)
        if rule.params["dtype"] not in _CASTABLE:
            raise RuleError(f"{where}: cannot cast to {rule.params['dtype']!r}")
        if "from_dtype" in r:
            rule.params["from_dtype"] = _require(r, "from_dtype", where)
    elif op in ("split", "concat"):
        rule.params["dim"] = _require(r, "dim", where, int)
        rule.params["sizes"] = _require(r, "sizes", where, list)
        if op == "concat" and len(rule.params["sizes"]) != len(rule.match):
            raise RuleError(f"{where}: 'sizes' must have one entry per 'match' pattern")
        if op == "split" and len(rule.params["sizes"]) != len(rule.to):
            raise RuleError(f"{where}: 'sizes' must have one entry per target")
    return rule


def _is_shape(shape: Any) -> bool:
    return isinstance(shape, list) and all(isinstance(d, int | str) and not isinstance(d, bool) for d in shape)


def _parse_create(r: dict, rid: str, where: str) -> StateRule:
    """`create`: a constant tensor the target adds (e.g. a loss-weight buffer of ones); it matches no source key."""
    known = {"id", "op", "to", "fill", "shape", "dtype", "reason"}
    if set(r) - known:
        raise RuleError(f"{where}: unknown fields {sorted(set(r) - known)}")
    to = _require(r, "to", where)
    fill = r.get("fill")
    if not isinstance(fill, int | float) or isinstance(fill, bool):
        raise RuleError(f"{where}: 'fill' must be a number")
    if not _is_shape(r.get("shape")):
        raise RuleError(f"{where}: 'shape' must be a list of ints or config keys")
    dtype = r.get("dtype")
    if dtype is not None and dtype not in _CASTABLE:
        raise RuleError(f"{where}: unknown dtype {dtype!r}")
    return StateRule(rid, "create", [], [to], {"fill": fill, "shape": list(r["shape"]), "dtype": dtype},
                     reason=_require(r, "reason", where), source=where)


def _parse_hparam_rule(r: dict, where: str, name: str, ids: set[str]) -> HparamRule:
    rid = _require(r, "id", where)
    where = f"{name}#{rid}"
    if rid in ids:
        raise RuleError(f"{where}: duplicate rule id")
    ids.add(rid)
    op = _require(r, "op", where)
    if op not in HPARAM_OPS:
        raise RuleError(f"{where}: unknown hparam op {op!r} (one of {sorted(HPARAM_OPS)})")
    rule = HparamRule(rid, op, _require(r, "key", where), source=where)
    if op == "set":
        if "value" not in r:
            raise RuleError(f"{where}: missing field 'value'")
        rule.value, rule.has_value, rule.if_missing = r["value"], True, bool(r.get("if_missing", False))
        if "previous" in r:
            rule.previous, rule.has_previous = r["previous"], True
    elif op == "rename":
        rule.to = _require(r, "to", where)
    else:
        rule.reason = _require(r, "reason", where)
        if "value" in r:
            rule.value, rule.has_value = r["value"], True
    return rule


_CAST_INVERTIBLE = _WIDENING
