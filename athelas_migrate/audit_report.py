"""The rename report: every source key, the rule that handled it, where it went, and proof it is unchanged.

Three renderings of one `AuditReport`: JSON (everything), Markdown (a summary a reviewer reads first, then one
section per rule), and terminal text that stays readable at 80 columns and when piped (a key per line,
grouped by rule; a long target goes on its own line instead of splitting an identifier).

To add a field, add it to `AuditReport`, fill it in `build_audit` from the MigrationResult, and render it in
`to_markdown` and `to_text` (JSON follows the dataclass by itself).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from .io.tensor_ref import TensorRef
from .pipeline import MigrationResult


@dataclass
class AuditRow:
    """One source key: the rule that handled it, where it went, and whether its values are unchanged."""

    source: str
    rule: str
    op: str
    target: str | None
    shape: list[int]
    dtype: str
    sha256: str  # sha256 of the source tensor's values (its raw bytes)
    unchanged: bool | None  # target values bitwise equal to the source (None: dropped)
    reason: str = ""


@dataclass
class AuditReport:
    """The rename report of one migration; JSON, Markdown and terminal text are renderings of it."""

    source: str
    family: str
    source_layout: str
    target_layout: str
    rule_files: list[dict[str, str]]
    rows: list[AuditRow]
    restored: list[dict[str, str]]
    hparam_edits: list[str]
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    optimizer_moves: list[list[int]] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        """Counts a reviewer checks first.

        Returns:
            Label -> count (kept, renamed, dropped, restored, values changed, ...), in display order.
        """
        return {
            "kept": sum(1 for r in self.rows if r.target == r.source),
            "renamed": sum(1 for r in self.rows if r.target and r.target != r.source),
            "dropped": sum(1 for r in self.rows if r.target is None),
            "restored": len(self.restored),
            "values changed": sum(1 for r in self.rows if r.unchanged is False),
            "hyper-parameter edits": len(self.hparam_edits),
            "optimizer state entries renumbered": len(self.optimizer_moves),
        }

    def by_rule(self) -> dict[str, list[AuditRow]]:
        """The rows grouped by the rule (or rule chain) that handled them, in first-seen order.

        Returns:
            Rule label -> its rows.
        """
        groups: dict[str, list[AuditRow]] = defaultdict(list)
        for r in self.rows:
            groups[r.rule].append(r)
        return dict(groups)

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready.

        Returns:
            The report's fields plus its `summary`.
        """
        return {**asdict(self), "summary": self.summary()}

    def to_json(self) -> str:
        """The `audit --format json` output.

        Returns:
            `to_dict()` as indented JSON.
        """
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        """The `audit --format md` output: the summary a reviewer reads first, then one table per rule.

        Returns:
            The Markdown document, newline-terminated.
        """
        files = ", ".join(f"`{r['file']}` (sha256 {r['sha256'][:12]})" for r in self.rule_files) or "none"
        lines = [f"# Migration audit: `{self.source}`", "",
                 f"{self.family} {self.source_layout} -> {self.target_layout}; rule files: {files}", "",
                 "## Summary", "", "| | count |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in self.summary().items()]
        if self.optimizer_moves:
            lines += ["", "The optimizer state was renumbered to the target's parameter order (saved id -> new id): "
                      + ", ".join(f"{a}->{b}" for a, b in self.optimizer_moves[:40])
                      + (" ..." if len(self.optimizer_moves) > 40 else "")]
        for rule, rows in self.by_rule().items():
            lines += ["", f"## `{rule}` ({len(rows)} keys, {rows[0].op})", "",
                      "| source key | target key | shape | dtype | source values sha256 | values |",
                      "|---|---|---|---|---|---|"]
            for r in rows:
                target = f"`{r.target}`" if r.target else f"dropped: {r.reason}"
                lines.append(f"| `{r.source}` | {target} | {r.shape} | {r.dtype} | `{r.sha256[:16]}` "
                             f"| {_values(r)} |")
        restored = [f"`{x['target']}` from `{x['anchor']}` ({x['rule']})" for x in self.restored]
        for title, items in (("Restored keys", restored), ("Hyper-parameter edits", self.hparam_edits),
                             ("Notes", self.notes), ("Warnings", self.warnings)):
            if items:
                lines += ["", f"## {title}", ""] + [f"- {i}" for i in items]
        return "\n".join(lines) + "\n"

    def to_text(self, width: int = 80) -> list[str]:
        """Plain lines for a terminal: no line is cut inside an identifier at `width` columns.

        Args:
            width: the terminal width; longer rows put the target and metadata on lines of their own.

        Returns:
            The lines, without newlines.
        """
        out = [f"{self.family} {self.source_layout} -> {self.target_layout}: {self.source}",
               "summary: " + ", ".join(f"{v} {k}" for k, v in self.summary().items() if v)]
        for rule, rows in self.by_rule().items():
            out.append(f"{rule} [{rows[0].op}] {len(rows)} key(s)")
            for r in rows:
                meta = f"{'x'.join(map(str, r.shape)) or 'scalar'} {r.dtype} {_values(r)}"
                target = (r.target if r.target != r.source else "(kept)") if r.target else f"dropped: {r.reason}"
                one = f"  {r.source} -> {target}  {meta}"
                if len(one) <= width:
                    out.append(one)
                else:
                    out += [f"  {r.source}", f"    -> {target}", f"       {meta}"]
        out += [f"restored {x['target']} from {x['anchor']} ({x['rule']})" for x in self.restored]
        out += [f"hparam {h}" for h in self.hparam_edits]
        if self.optimizer_moves:
            out.append(f"optimizer state renumbered for {len(self.optimizer_moves)} parameter(s)")
        out += [f"warning {w}" for w in self.warnings]
        return [part for line in out for part in _wrap(line, width)]


def _wrap(line: str, width: int) -> list[str]:
    """Wrap prose at spaces only (an identifier is never split), continuation lines indented."""
    import textwrap

    if len(line) <= width:
        return [line]
    indent = " " * (len(line) - len(line.lstrip()) + 4)
    return textwrap.wrap(line, width, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False)


def _values(r: AuditRow) -> str:
    return "unchanged" if r.unchanged else ("-" if r.unchanged is None else "CHANGED")


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (d or {}).items() if isinstance(d, dict) else ():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = f"<tensor {list(v.shape)}>" if isinstance(v, TensorRef) else v
    return out


def _hparam_diff(before: dict | None, after: dict) -> list[str]:
    """Edits of the hyper-parameters, with keys that only moved (same name and value under another parent)
    reported once per move ("moved 18 keys under config") instead of one removal and one addition each."""
    a, b = _flat(before), _flat(after)
    removed = [k for k in a if k not in b]
    added = [k for k in b if k not in a]
    moves: dict[tuple[str, str], list[str]] = defaultdict(list)
    for k in list(removed):
        leaf = k.rsplit(".", 1)[-1]
        match = next((n for n in added if n.rsplit(".", 1)[-1] == leaf and _same(b[n], a[k])), None)
        if match is not None:
            moves[(k.rpartition(".")[0] or "top level", match.rpartition(".")[0] or "top level")].append(leaf)
            removed.remove(k)
            added.remove(match)
    edits = [f"moved {len(keys)} key(s) from {src} to {dst}: {', '.join(keys)}" for (src, dst), keys in moves.items()]
    by_parent: dict[str, list[str]] = defaultdict(list)
    for k in added:
        by_parent[k.rpartition(".")[0]].append(k)
    for parent, keys in by_parent.items():
        if parent and len(keys) >= 3:  # a whole new sub-config (bert_config): one line
            edits.append(f"added {parent} ({len(keys)} keys: {', '.join(k.rsplit('.', 1)[-1] for k in keys)})")
        else:
            edits += [f"added {k} = {b[k]!r}" for k in keys]
    edits += [f"removed {k}" for k in removed]
    edits += [f"changed {k}: {a[k]!r} -> {b[k]!r}" for k in a if k in b and not _same(a[k], b[k])]
    return edits


def _same(x: Any, y: Any) -> bool:
    return json.dumps(x, default=str, sort_keys=True) == json.dumps(y, default=str, sort_keys=True)


def build_audit(result: MigrationResult) -> AuditReport:
    """The audit of a migration planned and applied in memory (nothing written).

    Args:
        result: what `pipeline.plan_and_apply` returned; its traces cover every source key.

    Returns:
        The AuditReport, with a sha256 of every source tensor and whether its target is bitwise the same.
    """
    rows = []
    for tr in result.traces:
        src = result.raw.state_dict[tr.source]
        unchanged = None
        if tr.target and tr.target in result.state:
            unchanged = result.state[tr.target].digest() == src.digest()
        rows.append(AuditRow(tr.source, " > ".join(tr.rules) or "-", "/".join(tr.ops) or "keep", tr.target,
                             list(src.shape), src.dtype, src.digest(), unchanged, tr.reason))
    restored = [{"target": c.target, "anchor": c.source or f"nothing (a constant: {c.reason})",
                 "rule": c.rules[0] if c.rules else ""} for c in result.created]
    return AuditReport(
        source=result.raw.path, family=result.family.name, source_layout=result.source_version,
        target_layout=result.target_version,
        rule_files=[{"file": rf.name, "edge": f"{rf.source_version}->{rf.target_version}", "sha256": rf.digest}
                    for rf in result.chain],
        rows=rows, restored=restored,
        hparam_edits=result.hparam_notes + _hparam_diff(result.raw.hyper_parameters, result.hyper_parameters),
        notes=result.notes, warnings=result.warnings,
        optimizer_moves=[list(m) for m in getattr(result, "optimizer_moves", [])])
