"""The version graph: rule files are its edges; a plan is the shortest path between two versions."""

from __future__ import annotations

import importlib.resources
from collections import deque
from functools import lru_cache
from pathlib import Path

from ..errors import RuleError, UsageError
from .inverse import invert_file
from .schema import RuleFile, parse_rule_file


def mappings_root() -> Path:
    """`mappings/` of a source checkout, else the copy installed as package data."""
    here = Path(__file__).resolve().parents[2] / "mappings"
    if here.is_dir():
        return here
    return Path(str(importlib.resources.files("athelas_migrate.mappings")))


@lru_cache(maxsize=4)
def load_rule_files(root: str | None = None) -> tuple[RuleFile, ...]:
    base = Path(root) if root else mappings_root()
    files = []
    for path in sorted(base.rglob("*.toml")):
        files.append(parse_rule_file(path, path.relative_to(base).as_posix()))
    seen: dict[tuple[str, str, str], str] = {}
    for rf in files:
        key = (rf.family, *rf.edge)
        if key in seen:
            raise RuleError(f"two rule files for {rf.family} {rf.edge[0]}->{rf.edge[1]}: {seen[key]} and {rf.name}")
        seen[key] = rf.name
    return tuple(files)


def family_edges(family: str, root: str | None = None) -> list[RuleFile]:
    return [rf for rf in load_rule_files(root) if rf.family == family]


def versions(family: str, root: str | None = None) -> list[str]:
    vs = {v for rf in family_edges(family, root) for v in rf.edge}
    return sorted(vs)


def plan_path(family: str, source: str, target: str, root: str | None = None) -> list[RuleFile]:
    """Rule files to apply in order (inverted where the path runs backwards)."""
    if source == target:
        return []
    edges = family_edges(family, root)
    known = {v for rf in edges for v in rf.edge}
    for v in (source, target):
        if v not in known:
            raise UsageError(f"{family} has no layout version {v!r} (known: {', '.join(sorted(known)) or 'none'})")
    adjacency: dict[str, list[tuple[str, RuleFile, bool]]] = {}
    for rf in edges:
        adjacency.setdefault(rf.source_version, []).append((rf.target_version, rf, True))
        adjacency.setdefault(rf.target_version, []).append((rf.source_version, rf, False))
    prev: dict[str, tuple[str, RuleFile, bool]] = {}
    queue, seen = deque([source]), {source}
    while queue:
        v = queue.popleft()
        for nxt, rf, forward in sorted(adjacency.get(v, []), key=lambda e: e[0]):
            if nxt not in seen:
                seen.add(nxt)
                prev[nxt] = (v, rf, forward)
                queue.append(nxt)
    if target not in prev:
        raise UsageError(f"no path from {source} to {target} for {family}")
    path, v = [], target
    while v != source:
        u, rf, forward = prev[v]
        path.append(rf if forward else invert_file(rf))
        v = u
    return list(reversed(path))
