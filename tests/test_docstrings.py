"""Every module says what it is for, and every public function documents its contract in Google style.

A public top-level function, or a public method of a public class, needs a docstring; one with parameters
(besides self/cls) needs an `Args:` section naming each; one that returns a value needs `Returns:` (or
`Yields:`); one that raises a package error itself (`raise SomeError(` in its own body) needs `Raises:` naming
it. Skipped: names with a leading underscore, dunders, click command callbacks (their `--help` is the contract),
and overrides of a base method (a method a package base class defines, or a framework hook such as
`nn.Module.forward` on a class with a base outside the package): the base documents those.

Static (ast), so it sees every module without importing torch. To extend: a new rule is one more check in
`offenders`; a module not yet converted goes into `PENDING` until it is.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "athelas_migrate"

#: Modules (paths relative to the repository root, or a folder ending in "/") not converted yet; their owners
#: convert them, then the entry goes.
PENDING: set[str] = set()

#: Methods a class with a base outside the package may override from that base (torch, Lightning, click, json,
#: logging); their contract is the framework's.
FRAMEWORK_HOOKS = frozenset({
    "forward", "extra_repr", "reset_parameters", "training_step", "validation_step", "test_step", "predict_step",
    "configure_optimizers", "setup", "teardown", "prepare_data", "train_dataloader", "val_dataloader",
    "test_dataloader", "predict_dataloader", "on_save_checkpoint", "on_load_checkpoint", "on_train_epoch_end",
    "on_validation_epoch_end", "on_test_epoch_end", "on_train_start", "on_fit_start", "state_dict",
    "load_state_dict", "default", "format", "emit", "filter", "convert", "shell_complete", "get_metavar",
    "invoke", "get_command", "list_commands", "parse_args", "resolve_command", "format_help", "main",
})

_SECTION = re.compile(r"^\s*(Args|Arguments|Returns|Yields|Raises):\s*$")
_ENTRY = re.compile(r"^\s+\**([A-Za-z_]\w*)\b[^:]*:")


def _pending(rel: str) -> bool:
    return any(rel == p or (p.endswith("/") and rel.startswith(p)) for p in PENDING)


def _modules() -> list[tuple[str, ast.Module]]:
    return [(p.relative_to(ROOT).as_posix(), ast.parse(p.read_text(), filename=str(p)))
            for p in sorted(PACKAGE.rglob("*.py"))]


def sections(doc: str) -> dict[str, list[str]]:
    """Google-style sections of `doc`: section name -> the names its entries start with (entries are the lines
    at the section's first indentation; deeper lines continue an entry)."""
    found: dict[str, list[str]] = {}
    current: str | None = None
    head_indent = entry_indent = 0
    for line in doc.expandtabs().splitlines():
        indent = len(line) - len(line.lstrip())
        head = _SECTION.match(line)
        if head:
            current = "Args" if head.group(1) == "Arguments" else head.group(1)
            found.setdefault(current, [])
            head_indent, entry_indent = indent, 0
        elif current is not None and line.strip():
            if indent <= head_indent:
                current = None
                continue
            entry_indent = entry_indent or indent
            entry = _ENTRY.match(line)
            if entry and indent == entry_indent:
                found[current].append(entry.group(1))
    return found


def _package_errors(modules: list[tuple[str, ast.Module]]) -> set[str]:
    """Names of the exception classes the package defines (subclasses of its errors, found to a fixed point)."""
    bases: dict[str, set[str]] = {}
    for _, tree in modules:
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases.setdefault(node.name, set()).update(_base_name(b) for b in node.bases)
    errors = {"AthelasError"}
    while True:
        more = {name for name, b in bases.items() if b & errors} - errors
        if not more:
            return errors
        errors |= more


def _base_name(node: ast.expr) -> str:
    if isinstance(node, ast.Subscript):
        node = node.value
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def _own_nodes(func: ast.FunctionDef | ast.AsyncFunctionDef) -> Iterator[ast.AST]:
    """The nodes of `func`'s body, not of functions or classes nested in it."""
    stack: list[ast.AST] = list(func.body)
    while stack:
        node = stack.pop()
        yield node
        stack.extend(c for c in ast.iter_child_nodes(node)
                     if not isinstance(c, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef))


def _returns_value(func: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    ann = func.returns
    if ann is not None:
        text = ast.unparse(ann).strip("'\"")
        return text not in ("None", "NoReturn", "Never", "typing.NoReturn")
    return any(isinstance(n, ast.Return) and n.value is not None
               and not (isinstance(n.value, ast.Constant) and n.value.value is None) for n in _own_nodes(func))


def _raised(func: ast.FunctionDef | ast.AsyncFunctionDef, errors: set[str]) -> list[str]:
    names = []
    for node in _own_nodes(func):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            name = _base_name(node.exc.func)
            if name in errors and name not in names:
                names.append(name)
    return names


def _is_command(func: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A click command or group callback (`@click.command`, `@group.command(...)`, `@click.group`)."""
    for dec in func.decorator_list:
        target = dec.func if isinstance(dec, ast.Call) else dec
        if _base_name(target) in ("command", "group"):
            return True
    return False


def _is_property(func: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any(_base_name(d) in ("property", "cached_property", "setter") for d in func.decorator_list)


def _class_methods(modules: list[tuple[str, ast.Module]]) -> dict[str, set[str]]:
    """Class name -> the public method names it defines (for override detection across the package)."""
    methods: dict[str, set[str]] = {}
    for _, tree in modules:
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                methods.setdefault(node.name, set()).update(
                    f.name for f in node.body if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef))
    return methods


def _inherited(cls: ast.ClassDef, methods: dict[str, set[str]], bases: dict[str, list[str]]) -> tuple[set[str], bool]:
    """Method names `cls` inherits from package classes, and whether a base lies outside the package."""
    names: set[str] = set()
    external = False
    seen: set[str] = set()
    stack = [_base_name(b) for b in cls.bases]
    while stack:
        base = stack.pop()
        if base in seen or base in ("object", "Generic", "Protocol", ""):
            continue
        seen.add(base)
        if base in methods:
            names |= methods[base]
            stack.extend(bases.get(base, []))
        else:
            external = True
    return names, external


def _targets(modules: list[tuple[str, ast.Module]]) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef,
                                                                      bool]]:
    """(module path, function, whether it is a method) for every function the contract applies to, outside
    PENDING."""
    methods = _class_methods(modules)
    bases: dict[str, list[str]] = {}
    for _, tree in modules:
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases.setdefault(node.name, []).extend(_base_name(b) for b in node.bases)
    for rel, tree in modules:
        if _pending(rel):
            continue
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                if not node.name.startswith("_") and not _is_command(node):
                    yield rel, node, False
            elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                inherited, external = _inherited(node, methods, bases)
                for func in node.body:
                    if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef) or func.name.startswith("_"):
                        continue
                    if func.name in inherited or (external and func.name in FRAMEWORK_HOOKS):
                        continue
                    yield rel, func, True


def offenders(modules: list[tuple[str, ast.Module]]) -> list[str]:
    """`path:line name: missing ...` for every function that breaks the contract, and every module without a
    module docstring."""
    errors = _package_errors(modules)
    found = [f"{rel}:1 <module>: missing module docstring" for rel, tree in modules
             if not ast.get_docstring(tree) and not _pending(rel)]
    for rel, func, method in _targets(modules):
        doc = ast.get_docstring(func)
        if not doc:
            found.append(f"{rel}:{func.lineno} {func.name}: missing docstring")
            continue
        have = sections(doc)
        missing = []
        a = func.args
        params = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
        params += [p.arg for p in (a.vararg, a.kwarg) if p is not None]
        if method and params[:1] in (["self"], ["cls"]):
            params = params[1:]
        undocumented = [p for p in params if p not in have.get("Args", [])]
        if undocumented:
            missing.append(f"Args ({', '.join(undocumented)})")
        if _returns_value(func) and not _is_property(func) and not ({"Returns", "Yields"} & have.keys()):
            missing.append("Returns")
        unnamed = [e for e in _raised(func, errors) if e not in have.get("Raises", [])]
        if unnamed:
            missing.append(f"Raises ({', '.join(unnamed)})")
        if missing:
            found.append(f"{rel}:{func.lineno} {func.name}: missing {', '.join(missing)}")
    return found


def test_public_functions_document_their_contract():
    bad = offenders(_modules())
    assert not bad, f"{len(bad)} docstring offenders:\n" + "\n".join(bad)


_GOOD = '''
"""Module."""
class UsageError(AthelasError):
    """Refused."""
class Thing:
    def go(self, a: int, *, b: str = "") -> int:
        """Go.

        Args:
            a: how far.
            b (str): a label.

        Returns:
            The distance.

        Raises:
            UsageError: a is negative.
        """
        if a < 0:
            raise UsageError("negative")
        return a
'''


def test_checker_accepts_a_complete_docstring_and_names_each_gap():
    good = ast.parse(_GOOD)
    assert offenders([("m.py", good)]) == []
    bad = ast.parse(_GOOD.replace("            b (str): a label.\n", "").replace("Returns:", "Notes:")
                    .replace("UsageError: a", "ValueError: a"))
    assert offenders([("m.py", bad)]) == ["m.py:6 go: missing Args (b), Returns, Raises (UsageError)"]
    assert offenders([("m.py", ast.parse("def f(): pass"))]) == [
        "m.py:1 <module>: missing module docstring", "m.py:1 f: missing docstring"]


_SKIPPED = '''
"""Module."""
import click
from torch import nn

@click.command()
def run_cmd(path):
    pass

def _helper(x):
    return x

class Base:
    def step(self, x: int) -> int:
        """Step.

        Args:
            x: input.

        Returns:
            The output.
        """
        return x

class Child(Base):
    def step(self, x: int) -> int:
        return x

class Net(nn.Module):
    def forward(self, x):
        return x

    @property
    def width(self) -> int:
        """The width."""
        return 3

    def grow(self, by):
        return by
'''


def test_checker_skips_commands_private_names_and_overrides_but_not_new_methods():
    assert offenders([("m.py", ast.parse(_SKIPPED))]) == ["m.py:38 grow: missing docstring"]


def test_checker_skips_pending_modules_and_folders(monkeypatch):
    bare = ast.parse("def f(): pass")
    monkeypatch.setattr(sys.modules[__name__], "PENDING", {"athelas_migrate/rules/", "athelas_migrate/one.py"})
    assert offenders([("athelas_migrate/rules/x.py", ast.parse(_SKIPPED))]) == []  # a pending folder
    assert offenders([("athelas_migrate/one.py", bare)]) == []  # a pending module
    assert offenders([("athelas_migrate/other.py", bare)]) == [
        "athelas_migrate/other.py:1 <module>: missing module docstring",
        "athelas_migrate/other.py:1 f: missing docstring"]
