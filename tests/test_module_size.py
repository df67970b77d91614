"""No module of the package grows past about 400 lines (issue 13): a module that long holds more than one job,
and the next change should split one out (as io/chunks.py, scan.py, equivalence/batching.py and
equivalence/checks.py were). Static: counts the lines of every file, imports nothing."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "athelas_migrate"
MAX_LINES = 420


def oversized(root: Path, limit: int = MAX_LINES) -> list[str]:
    """`path (N lines)` for every .py file under `root` longer than `limit` lines, sorted."""
    found = []
    for path in sorted(root.rglob("*.py")):
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > limit:
            found.append(f"{path.relative_to(root.parent).as_posix()} ({n} lines)")
    return found


def test_the_check_sees_a_long_module(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "short.py").write_text("x = 1\n" * MAX_LINES)
    (pkg / "sub" / "long.py").write_text("x = 1\n" * (MAX_LINES + 1))
    assert oversized(pkg) == [f"pkg/sub/long.py ({MAX_LINES + 1} lines)"]


def test_no_module_exceeds_the_limit():
    too_long = oversized(PACKAGE)
    assert not too_long, f"modules over {MAX_LINES} lines (split a cohesive job out):\n" + "\n".join(too_long)
