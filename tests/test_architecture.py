"""The import graph flows one way: no module may reach itself through imports, counting imports inside
functions (a lazy import is still a dependency, only a later one). Static, so it sees every branch."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("athelas_migrate", "legacy")


def _modules() -> dict[str, Path]:
    """Every module of the checked packages, by dotted name (a package by its own name, from __init__.py)."""
    found: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest known module that `name` lies in (an imported attribute resolves to its module)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> dict[str, set[str]]:
    """module -> the modules it imports, anywhere in its body, restricted to the checked packages.

    `from pkg import name` counts as an edge to `pkg.name` when that is a module, otherwise to `pkg`. The
    parent packages a submodule import runs are not edges: a package's `__init__` is its facade, above its
    submodules, and may import them (lazily or not)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        package = mod if is_pkg else mod.rpartition(".")[0]
        targets: list[str] = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    base_name = ".".join(base + ([node.module] if node.module else []))
                else:
                    base_name = node.module or ""
                subs = [f"{base_name}.{a.name}" for a in node.names if f"{base_name}.{a.name}" in modules]
                targets += subs if len(subs) == len(node.names) else [base_name, *subs]
        for target in targets:
            dep = _resolve(target, modules)
            if dep and dep != mod:
                graph[mod].add(dep)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan), as a readable path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_one_cycle(graph, set(comp)) + ([f"(component: {', '.join(comp)})"] if len(comp) > 3 else [])
            for comp in components]


def _one_cycle(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first), for the failure message."""
    start = min(comp)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & comp):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, v, start]
                if w not in parents:
                    parents[w] = v
                    nxt.append(w)
        frontier = nxt
    return sorted(comp)


def test_the_graph_sees_lazy_and_relative_imports():
    graph = import_graph()
    assert "athelas_migrate.io.reader" in graph["athelas_migrate.pipeline"]
    assert "athelas_migrate.families" in graph["athelas_migrate.api"]  # imported inside a function


def test_cycle_finder_reports_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


#: Lowest first. A module may import its own layer and the layers below, never one above; modules not listed
#: (equivalence, export, train, batch, api, cli, ...) are the top. `models`/`components` are plain PyTorch: they
#: reach the engine only through `athelas_migrate.hooks`, which the package installs.
LAYERS = [
    ("base", ("errors", "_version", "hooks", "config_keys", "family_path")),
    ("io", ("io", "outputs")),
    ("rules", ("rules",)),
    ("models", ("models", "components")),
    ("families", ("families",)),
    ("engine", ("pipeline", "scan", "materialise", "optimizer_state")),
]


#: The parts of a family folder that run models: its verify adapter, ONNX spec and, for a family whose classes live
#: in its folder, the legacy and refactored classes. They sit at the top (beside the equivalence runner and export),
#: named by the family by string and imported only when used.
FOLDER_TOP_MODULES = ("verify", "onnx", "legacy", "model")


def _layer(module: str) -> int:
    name = module.removeprefix("athelas_migrate.")
    parts = name.split(".")
    if len(parts) == 3 and parts[0] == "families" and parts[2] in FOLDER_TOP_MODULES:
        return len(LAYERS)
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return rank
    return len(LAYERS)


def test_imports_flow_one_way():
    graph = import_graph()
    upward = [f"{m} ({LAYERS[_layer(m)][0]}) imports {d} ({LAYERS[_layer(d)][0] if _layer(d) < len(LAYERS) else 'top'})"
              for m in sorted(graph) if m.startswith("athelas_migrate.")
              for d in sorted(graph[m]) if d.startswith("athelas_migrate") and _layer(d) > _layer(m)]
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_models_load_legacy_files_through_the_hook_alone():
    """Only `athelas_migrate.models` imported: `load_from_checkpoint` of a legacy file still migrates in memory,
    through the reader the package installed in `athelas_migrate.hooks` (the models import no engine module)."""
    import subprocess
    import sys

    from conftest import FIXTURES

    code = (
        "import sys, warnings\n"
        "from athelas_migrate.models import BimodalCNN\n"
        "assert 'athelas_migrate.pipeline' not in sys.modules\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    warnings.simplefilter('always')\n"
        f"    m = BimodalCNN.load_from_checkpoint({str(FIXTURES / 'bimodal_cnn_v1.ckpt')!r},\n"
        "        overrides={'tab_field_list': ['a', 'b', 'c'], 'label_name': 'label'})\n"
        "assert any(issubclass(w.category, DeprecationWarning) for w in seen)\n"
        "print('LOADED', type(m).__name__, 'athelas_migrate.materialise' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and "LOADED BimodalCNN True" in proc.stdout, proc.stderr[-2000:]
