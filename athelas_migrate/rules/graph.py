"""The version graph: rule files are its edges; a plan is the shortest path between two versions.

The graph is validated once, when the rule files load (like Alembic's RevisionMap): per family the forward
edges form no cycle and end in exactly one head, the newest layout. To add a layout version, add one rule file
`mappings/<Family>/<old>-<new>.toml` whose target is the new head, and set the family's `latest` to it.
Family folders outside the package keep their rule files in their own `mappings/` (see `family_path`); all roots
form one graph, and two files for one edge are refused wherever they are.
"""

from __future__ import annotations

import importlib.resources
from collections import deque
from functools import lru_cache
from pathlib import Path

from ..errors import RuleError, UsageError, VersionGraphError
from ..family_path import extra_mapping_roots
from .inverse import invert_file
from .schema import RuleFile, parse_rule_file


def mappings_root() -> Path:
    """`mappings/` of a source checkout, else the copy installed as package data.

    The checkout's folder wins so that rule files edited in a working tree take effect without reinstalling.

    Returns:
        The folder holding the bundled rule files.
    """
    here = Path(__file__).resolve().parents[2] / "mappings"
    if here.is_dir():
        return here
    return Path(str(importlib.resources.files("athelas_migrate.mappings")))


def load_rule_files(root: str | None = None) -> tuple[RuleFile, ...]:
    """Every rule file, parsed, with the version graph validated.

    Args:
        root: one mappings folder to read; default: the bundled `mappings/` plus the extra family folders'.

    Returns:
        The rule files, ordered by root and path.

    Raises:
        RuleError: a malformed file, or two files for one edge.
        VersionGraphError: a family's edges form a cycle or end in more than one head.
    """
    roots = (Path(root),) if root else (mappings_root(), *extra_mapping_roots())
    return _load_roots(roots)


@lru_cache(maxsize=8)
def _load_roots(roots: tuple[Path, ...]) -> tuple[RuleFile, ...]:
    files = []
    for base in roots:
        for path in sorted(base.rglob("*.toml")):
            files.append(parse_rule_file(path, path.relative_to(base).as_posix()))
    seen: dict[tuple[str, str, str], str] = {}
    for rf in files:
        key = (rf.family, *rf.edge)
        if key in seen:
            raise RuleError(f"two rule files for {rf.family} {rf.edge[0]}->{rf.edge[1]}: {seen[key]} and {rf.name}")
        seen[key] = rf.name
    for family in sorted({rf.family for rf in files}):
        _head_of([rf for rf in files if rf.family == family], family)
    return tuple(files)


load_rule_files.cache_clear = _load_roots.cache_clear  # type: ignore[attr-defined]


def _head_of(edges: list[RuleFile], family: str) -> str:
    """The one version no forward edge leaves, after checking the forward edges form no cycle.

    Raises:
        VersionGraphError: a cycle, or not exactly one head."""
    forward: dict[str, set[str]] = {}
    for rf in edges:
        forward.setdefault(rf.source_version, set()).add(rf.target_version)
        forward.setdefault(rf.target_version, set())
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(v: str, path: tuple[str, ...]) -> None:
        state[v] = 1
        for w in sorted(forward[v]):
            if state.get(w) == 1:
                cycle = (*path[path.index(w):], w) if w in path else (v, w)
                names = tuple(rf.name for rf in edges if rf.source_version in cycle and rf.target_version in cycle)
                raise VersionGraphError(f"{family}: the rule files form a cycle {' -> '.join(cycle)} "
                                        f"({', '.join(names)})", family, cycle, names)
            if w not in state:
                visit(w, (*path, w))
        state[v] = 2

    for v in sorted(forward):
        if v not in state:
            visit(v, (v,))
    heads = tuple(sorted(v for v, nxt in forward.items() if not nxt))
    if len(heads) != 1:
        raise VersionGraphError(f"{family}: the rule files end in {len(heads)} newest versions ({', '.join(heads)}); "
                                "every version must lead to one head", family, heads,
                                tuple(rf.name for rf in edges))
    return heads[0]


def head(family: str, root: str | None = None) -> str | None:
    """The newest layout version of `family` in the rule files.

    Args:
        family: the family's name.
        root: one mappings directory; None for all (bundled and extra family folders').

    Returns:
        The head version, or None when the family has no rule files.
    """
    edges = family_edges(family, root)
    return _head_of(edges, family) if edges else None


def family_edges(family: str, root: str | None = None) -> list[RuleFile]:
    """The rule files of `family` (forward edges), in path order.

    Args:
        family: the family's name.
        root: one mappings directory; None for all (bundled and extra family folders').

    Returns:
        Its rule files (empty when it has none).
    """
    return [rf for rf in load_rule_files(root) if rf.family == family]


def plan_path(family: str, source: str, target: str, root: str | None = None) -> list[RuleFile]:
    """Rule files to apply in order (inverted where the path runs backwards): the shortest path.

    Args:
        family: the family's name.
        source: the checkpoint's layout version.
        target: the wanted layout version.
        root: one mappings directory; None for all (bundled and extra family folders').

    Returns:
        The rule files, forward or inverted; empty when source == target.

    Raises:
        UsageError: an unknown version, or no path between the two.
        NotInvertibleError: the path runs backwards over an edge that cannot be undone.
    """
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
