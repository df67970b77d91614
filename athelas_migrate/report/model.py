"""The data behind one HTML report page, built from the audit trace of a migration and a verify report.

Kept apart from rendering so tests can check what a page will show (keys, edges, the diverging
module) without a browser, and so the template only formats: no decisions are taken in it.
Everything is ordered deterministically (checkpoint order for keys, first appearance for rules).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..audit_report import build_audit
from ..pipeline import MigrationResult

#: one colour per rule group, cycled (Okabe-Ito, readable by colour-blind people and in print)
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#8C6D1F", "#5A5A9E")


@dataclass
class KeyInfo:
    """One parameter or buffer key on one side, with what the tooltip and the info panel show."""

    key: str
    side: str  # "old" | "new"
    shape: list[int]
    dtype: str
    sha256: str
    rule: str  # file#id (" > "-joined along a chain), "" when no rule touched it
    status: str  # renamed | kept | dropped | restored | split | concat | transformed
    reason: str = ""
    group: int = -1  # index into Page.groups; -1: none


@dataclass
class Node:
    """A module subtree: `path` is the dotted prefix; leaves carry their KeyInfo."""

    name: str
    path: str
    children: list[Node] = field(default_factory=list)
    key: KeyInfo | None = None
    leaves: int = 0
    diverging: bool = False  # the first diverging module (or one of its ancestors) per verify's localisation


@dataclass
class Edge:
    """A line from an old key to a new key (a rename, a split branch, a concat input or a restore)."""

    source: str
    target: str
    group: int
    kind: str  # rename | split | concat | restore | transform


@dataclass
class RuleGroup:
    """The keys one rule (file#id) moved: the unit the page groups and colours lines by."""

    rule: str
    op: str
    color: str
    count: int = 0
    reason: str = ""


@dataclass
class Page:
    """Everything one report page shows."""

    title: str
    old_path: str
    new_path: str
    family: str
    source_layout: str
    target_layout: str
    old_tree: Node
    new_tree: Node
    keys: dict[str, KeyInfo]  # "old:KEY" / "new:KEY" -> info
    edges: list[Edge]
    groups: list[RuleGroup]
    dropped: list[KeyInfo]
    rule_files: list[dict[str, str]]
    hparam_edits: list[str]
    notes: list[str]
    warnings: list[str]
    stamp: dict[str, Any] | None
    commands: list[str]
    verify: dict[str, Any] | None = None  # VerifyReport.to_dict() (None: not verified)
    verdict: str = "not verified"  # passed | failed | error | not verified
    diverging: dict[str, Any] | None = None  # verify's localisation, when a module was named
    modules: list[dict[str, Any]] = field(default_factory=list)  # per aligned module output differences
    plots: dict[str, str] = field(default_factory=dict)  # name -> inline SVG
    generated: str = ""

    @property
    def edge_count(self) -> int:
        """How many key mappings (lines between the trees) the page draws."""
        return len(self.edges)


def _tree(keys: list[str], infos: dict[str, KeyInfo], side: str) -> Node:
    root = Node("", "")
    index: dict[str, Node] = {"": root}
    for key in keys:
        parts = key.split(".")
        parent = root
        for i in range(1, len(parts)):
            path = ".".join(parts[:i])
            node = index.get(path)
            if node is None:
                node = index[path] = Node(parts[i - 1], path)
                parent.children.append(node)
            parent = node
        parent.children.append(Node(parts[-1], key, key=infos[f"{side}:{key}"]))
    _count(root)
    return root


def _count(node: Node) -> int:
    node.leaves = 1 if node.key is not None else sum(_count(c) for c in node.children)
    return node.leaves


def _mark_diverging(root: Node, module: str | None) -> None:
    """Flag the diverging module's node and its ancestors, so a collapsed tree still shows where it is."""
    if not module:
        return
    parts = module.split(".")
    node = root
    for i in range(1, len(parts) + 1):
        path = ".".join(parts[:i])
        node = next((c for c in node.children if c.path == path and c.key is None), None)
        if node is None:
            return
        node.diverging = True


def build_page(result: MigrationResult, verify: Any = None, *, old_path: str, new_path: str,
               stamp: dict[str, Any] | None = None, commands: list[str] | None = None,
               generated: str = "") -> Page:
    """The page of migrating `old_path` (whose audit trace is `result`) into `new_path`.

    Args:
        result: the migration's MigrationResult (its audit gives every key's rule and target).
        verify: a VerifyReport, or None when not verified.
        old_path: how the page names OLD.
        new_path: how the page names NEW.
        stamp: NEW's layout stamp (provenance), or None.
        commands: the shell commands the page shows.
        generated: the rendering time shown.

    Returns:
        The Page: both trees, edges grouped by rule, verdict, diverging module, per-module differences.
    """
    audit = build_audit(result)
    groups: list[RuleGroup] = []
    group_of: dict[str, int] = {}

    def group(rule: str, op: str, reason: str = "") -> int:
        if rule not in group_of:
            group_of[rule] = len(groups)
            groups.append(RuleGroup(rule, op, PALETTE[len(groups) % len(PALETTE)], reason=reason))
        g = groups[group_of[rule]]
        g.count += 1
        return group_of[rule]

    infos: dict[str, KeyInfo] = {}
    edges: list[Edge] = []
    dropped: list[KeyInfo] = []
    targets_per_source: dict[str, list[str]] = {}
    sources_per_target: dict[str, int] = {}
    for row in audit.rows:
        targets = [t for t in (row.target or "").split(", ") if t]
        targets_per_source[row.source] = targets
        for t in targets:
            sources_per_target[t] = sources_per_target.get(t, 0) + 1
    for row in audit.rows:
        targets = targets_per_source[row.source]
        ops = row.op.split("/")
        if not targets:
            status = "dropped"
        elif len(targets) > 1:
            status = "split"
        elif sources_per_target[targets[0]] > 1:
            status = "concat"
        elif any(o not in ("rename", "keep") for o in ops):
            status = "transformed"
        else:
            status = "kept" if targets[0] == row.source else "renamed"
        g = group(row.rule, row.op, row.reason)
        info = KeyInfo(row.source, "old", row.shape, row.dtype, row.sha256, row.rule, status, row.reason, g)
        infos[f"old:{row.source}"] = info
        if not targets:
            dropped.append(info)
        kind = {"split": "split", "concat": "concat", "transformed": "transform"}.get(status, "rename")
        for t in targets:
            edges.append(Edge(row.source, t, g, kind))
    restored = {c.target: c for c in result.created}
    first_edge: dict[str, Edge] = {}
    for e in edges:
        first_edge.setdefault(e.target, e)
    for key, ref in result.state.items():
        tr = restored.get(key)
        if tr is not None:
            g = group(tr.rules[0] if tr.rules else "", "restore")
            status, rule = "restored", tr.rules[0] if tr.rules else ""
            edges.append(Edge(tr.source, key, g, "restore"))
        else:
            e = first_edge.get(key)
            g = e.group if e else -1
            rule = groups[g].rule if e else ""
            status = infos[f"old:{e.source}"].status if e else "kept"
        infos[f"new:{key}"] = KeyInfo(key, "new", list(ref.shape), ref.dtype, ref.digest(), rule, status, group=g)
    old_tree = _tree([r.source for r in audit.rows], infos, "old")
    new_tree = _tree(list(result.state), infos, "new")

    page = Page(title=f"{result.family.name} {audit.source_layout} -> {audit.target_layout}: {old_path}",
                old_path=old_path, new_path=new_path, family=result.family.name,
                source_layout=audit.source_layout, target_layout=audit.target_layout, old_tree=old_tree,
                new_tree=new_tree, keys=infos, edges=edges, groups=groups, dropped=dropped,
                rule_files=audit.rule_files, hparam_edits=audit.hparam_edits, notes=list(audit.notes),
                warnings=list(audit.warnings), stamp=stamp, commands=list(commands or []), generated=generated)
    if stamp:
        _check_stamp(page, stamp)
    if verify is not None:
        _add_verify(page, verify)
    return page


def _check_stamp(page: Page, stamp: dict[str, Any]) -> None:
    """NEW was written by some rule files; say so when they are not the ones this page re-plans with."""
    used = {r.get("file"): r.get("sha256") for r in (stamp.get("provenance") or {}).get("rules", [])}
    for rf in page.rule_files:
        if rf["file"] in used and used[rf["file"]] != rf["sha256"]:
            page.warnings.append(f"NEW was written with another version of {rf['file']} (sha256 "
                                 f"{str(used[rf['file']])[:12]}, this page plans with {rf['sha256'][:12]})")


def _add_verify(page: Page, report: Any) -> None:
    page.verify = report.to_dict()
    page.verdict = "passed" if report.passed else ("failed" if report.failed_checks() else "error")
    loc = report.localisation or {}
    outputs = report.section("outputs")
    page.modules = list(loc.get("modules") or (outputs.summary.get("modules") if outputs else None) or [])
    if loc.get("module"):
        page.diverging = {k: loc.get(k) for k in ("module", "type", "old_module", "old_type", "kind", "max_abs",
                                                  "detail", "batch")}
        _mark_diverging(page.new_tree, loc["module"])
        _mark_diverging(page.old_tree, loc.get("old_module"))
