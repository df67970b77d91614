"""The rename report: every source key, the rule that handled it, where it went, and proof it is unchanged."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .io.tensor_ref import TensorRef
from .pipeline import MigrationResult


@dataclass
class AuditRow:
    source: str
    rule: str
    op: str
    target: str | None
    shape: list[int]
    dtype: str
    sha256: str
    unchanged: bool | None  # target values bitwise equal to the source (None: dropped)
    reason: str = ""


@dataclass
class AuditReport:
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        files = ", ".join(f"`{r['file']}` ({r['sha256'][:12]})" for r in self.rule_files) or "none"
        lines = [f"# Migration audit: `{self.source}`", "",
                 f"{self.family} {self.source_layout} -> {self.target_layout}; rule files: {files}", "",
                 "| source key | rule | target key | shape | dtype | sha256 | values |",
                 "|---|---|---|---|---|---|---|"]
        for r in self.rows:
            target = f"`{r.target}`" if r.target else f"dropped: {r.reason}"
            values = "unchanged" if r.unchanged else ("-" if r.unchanged is None else "**changed**")
            lines.append(f"| `{r.source}` | {r.rule} | {target} | {r.shape} | {r.dtype} | `{r.sha256[:16]}` "
                         f"| {values} |")
        restored = [f"`{x['target']}` from `{x['anchor']}` ({x['rule']})" for x in self.restored]
        for title, items in (("Restored keys", restored),
                             ("Hyper-parameter edits", self.hparam_edits), ("Notes", self.notes),
                             ("Warnings", self.warnings)):
            if items:
                lines += ["", f"## {title}", ""] + [f"- {i}" for i in items]
        return "\n".join(lines) + "\n"


def _hparam_diff(before: dict | None, after: dict) -> list[str]:
    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in (d or {}).items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = f"<tensor {list(v.shape)}>" if isinstance(v, TensorRef) else v
        return out

    a, b = flat(before), flat(after)
    edits = [f"removed {k}" for k in a if k not in b]
    edits += [f"added {k} = {b[k]!r}" for k in b if k not in a]
    edits += [f"changed {k}: {a[k]!r} -> {b[k]!r}" for k in a if k in b and a[k] != b[k]]
    return edits


def build_audit(result: MigrationResult) -> AuditReport:
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
        notes=result.notes, warnings=result.warnings)
