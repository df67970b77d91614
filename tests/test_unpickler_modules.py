"""Issue 13, item 6, for the restricted unpickler: small modules that say how to extend them, and public
functions documented Google-style (Args/Returns/Raises), checked statically."""

from __future__ import annotations

import ast
from pathlib import Path

import athelas_migrate.io.safe_unpickle as entry

IO = Path(entry.__file__).resolve().parent
MODULES = [IO / "safe_unpickle.py", *sorted((IO / "unpickling").glob("*.py"))]
MAX_LINES = 400


def _raises(fn: ast.FunctionDef) -> bool:
    """A `raise` in the function's own body (not in a nested function or class)."""
    todo = list(fn.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Raise) and node.exc is not None:
            return True
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            todo.extend(ast.iter_child_nodes(node))
    return False


def _missing_sections(fn: ast.FunctionDef) -> list[str]:
    doc = ast.get_docstring(fn) or ""
    params = [a.arg for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs]
    returns = not (fn.returns is None or (isinstance(fn.returns, ast.Constant) and fn.returns.value is None))
    generator = any(isinstance(n, ast.Yield | ast.YieldFrom) for n in ast.walk(fn))
    wanted = {"Args:": bool(params), "Returns:": returns and not generator, "Yields:": generator,
              "Raises:": _raises(fn)}
    return [section for section, needed in wanted.items() if needed and section not in doc]


def test_the_unpickler_is_split_into_small_modules():
    long = {p.name: n for p in MODULES if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert len(MODULES) > 5 and not long, long


def test_modules_say_how_to_extend_them():
    for path in MODULES:
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert len(doc.split()) >= 25, f"{path.name}: a module docstring should say why, and how to extend it"


def test_public_functions_have_google_style_docstrings():
    gaps = []
    for path in MODULES:
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                gaps += [f"{path.name}:{node.name} lacks {s}" for s in _missing_sections(node)]
    assert not gaps, "\n".join(gaps)


def test_the_checker_sees_a_missing_section():
    fn = ast.parse('def f(x: int) -> int:\n    """Doc.\n\n    Args:\n        x: x.\n    """\n'
                   '    if x:\n        raise ValueError(x)\n    return x\n').body[0]
    assert _missing_sections(fn) == ["Returns:", "Raises:"]
