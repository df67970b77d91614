"""Rule files: one TOML file per family and version edge, data only.

A file states `family`, `from`, `to`, an optional `description`, an optional `since` (why the edge exists,
one line of at most 200 characters, e.g. `since = "PR 123: split the encoder into components"`; `history` shows
it), and ordered `[[rules]]` (state-dict keys) and `[[hparams]]` (hyper-parameter edits). State rules:

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

A rule may carry only the fields its op takes (a state rule may add a `reason` note); a wrong type, an unknown field
or a `to` template naming a group the regex lacks is refused when the file loads.

Each op is a class in `rules/ops/` (parse, apply and invert in one place); to add one, see that package.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..errors import RuleError
from .ops import HPARAM_OPS, OPS, HparamRule, StateRule, file_ops
from .ops.fields import require

__all__ = ["SINCE_MAX_CHARS", "HparamRule", "RuleFile", "StateRule", "parse_rule_bytes", "parse_rule_file"]

SINCE_MAX_CHARS = 200
_TOP_LEVEL = {"family", "from", "to", "description", "since", "rules", "hparams"}


@dataclass
class RuleFile:
    """One parsed rule file: the edge it maps, its rules, and the digest the output's provenance cites."""

    path: str
    name: str  # path relative to the mappings root, for reports
    family: str
    source_version: str
    target_version: str
    description: str
    rules: list[StateRule]
    hparams: list[HparamRule]
    digest: str
    since: str = ""  # why the edge exists (a PR, a design note), shown by `history`

    @property
    def edge(self) -> tuple[str, str]:
        """(from, to) versions."""
        return self.source_version, self.target_version


def parse_rule_file(path: Path, name: str) -> RuleFile:
    """A rule file from disk.

    Args:
        path: the TOML file.
        name: its path relative to the mappings root, for messages and reports.

    Returns:
        The parsed file.

    Raises:
        RuleError: the file is malformed.
    """
    return parse_rule_bytes(path.read_bytes(), name, str(path))


def parse_rule_bytes(raw: bytes, name: str, path: str = "<text>") -> RuleFile:
    """A rule file from its bytes: for rules that live outside the mappings tree (inferred drafts, tests).

    Args:
        raw: the TOML text, UTF-8.
        name: the name messages and reports use.
        path: where it came from.

    Returns:
        The parsed file.

    Raises:
        RuleError: not TOML, a missing or unknown field, or a malformed rule.
    """
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RuleError(f"{name}: not valid TOML: {exc}", rule=name) from exc
    family = require(data, "family", name)
    src, dst = require(data, "from", name), require(data, "to", name)
    if set(data) - _TOP_LEVEL:
        raise RuleError(f"{name}: unknown top-level fields {sorted(set(data) - _TOP_LEVEL)}", rule=name)
    since = _since(data, name)
    ids: set[str] = set()
    rules = [_parse_state_rule(r, f"{name} rule {i}", name, ids) for i, r in enumerate(data.get("rules", []))]
    hparams = [_parse_hparam_rule(r, f"{name} hparam {i}", name, ids) for i, r in enumerate(data.get("hparams", []))]
    description = require(data, "description", name) if "description" in data else ""
    return RuleFile(path, name, family, src, dst, description, rules, hparams, hashlib.sha256(raw).hexdigest(), since)


def _since(data: dict, name: str) -> str:
    """The optional `since`: one printable line, bounded, since `history` prints it beside the edge."""
    if "since" not in data:
        return ""
    since = require(data, "since", name)
    if len(since) > SINCE_MAX_CHARS:
        raise RuleError(f"{name}: 'since' is {len(since)} characters; at most {SINCE_MAX_CHARS} (one line saying "
                        "why the edge exists)", rule=name)
    if not since.isprintable():
        raise RuleError(f"{name}: 'since' must be one line of printable text", rule=name)
    return since


def _rule_id(r: dict, where: str, name: str, ids: set[str]) -> tuple[str, str, str]:
    """(id, address, op) of a rule table; ids are unique across a file's state and hparam rules."""
    rid = require(r, "id", where)
    where = f"{name}#{rid}"
    if rid in ids:
        raise RuleError(f"{where}: duplicate rule id", rule=where)
    ids.add(rid)
    return rid, where, require(r, "op", where)


def _parse_state_rule(r: dict, where: str, name: str, ids: set[str]) -> StateRule:
    rid, where, op = _rule_id(r, where, name, ids)
    if op not in OPS or not OPS[op].in_files:
        raise RuleError(f"{where}: unknown op {op!r} (one of {file_ops(OPS)})", rule=where)
    return OPS[op].parse(r, rid, where)


def _parse_hparam_rule(r: dict, where: str, name: str, ids: set[str]) -> HparamRule:
    rid, where, op = _rule_id(r, where, name, ids)
    if op not in HPARAM_OPS or not HPARAM_OPS[op].in_files:
        raise RuleError(f"{where}: unknown hparam op {op!r} (one of {file_ops(HPARAM_OPS)})", rule=where)
    return HPARAM_OPS[op].parse(r, rid, where)
