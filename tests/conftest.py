"""Shared test fixtures: paths, the fixture manifest, copies of fixtures, an in-process CLI runner,
and a session-wide counter of fuzzed inputs (summed over xdist workers in a temporary directory: tests
never write into the working tree)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import sys
import tempfile
import uuid
from collections import Counter
from pathlib import Path

import pytest

# Hypothesis keeps caches in its storage directory (./.hypothesis by default): outside the checkout.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "athelas-hypothesis"))

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"


def _load_kernels():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_fixture_kernels", FIXTURES / "kernels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REGEN_TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}  # a few training steps on other kernels: measured <= 1e-6 apart


def regeneration_comparison() -> dict | None:
    """None where this machine computes with the fixtures' kernels (regenerated fixtures must then be bitwise
    equal), else the tolerance that regenerated tensors are held to (computed floats differ across CPUs)."""
    return None if _load_kernels().same_as_fixtures() else REGEN_TOLERANCE


def manifest_entries(fusion: bool = False) -> list[dict]:
    """`fixtures/manifest.json` (and `fusion_manifest.json` with fusion=True); overrides are complete."""
    entries = json.loads((FIXTURES / "manifest.json").read_text())
    if fusion and (FIXTURES / "fusion_manifest.json").exists():
        for e in json.loads((FIXTURES / "fusion_manifest.json").read_text()):
            overrides = dict(e.get("overrides") or {})
            if "bert_config" in e:
                overrides["bert_config"] = e["bert_config"]
            entries.append({**e, "overrides": overrides})
    return entries


@pytest.fixture
def fixture_copy(tmp_path):
    """`fixture_copy("bimodal_cnn_v1.ckpt")` -> a private copy under tmp_path (tests may corrupt it)."""

    def copy(name: str, dst_name: str | None = None) -> Path:
        dst = tmp_path / (dst_name or name)
        shutil.copyfile(FIXTURES / name, dst)
        return dst

    return copy


@pytest.fixture
def cli():
    """Run `athelas-migrate ARGS...` in-process: returns (exit_code, stdout, stderr)."""
    from click.testing import CliRunner

    from athelas_migrate.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception  # an exception the CLI did not handle is a test failure, not exit 1
        return result.exit_code, result.stdout, result.stderr

    return run


# --- hand-written pickles --------------------------------------------------------------------------


def G(module: str, name: str) -> bytes:
    """The GLOBAL opcode naming `module.name`."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def S(text: str) -> bytes:
    """A BINUNICODE string."""
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


P2 = b"\x80\x02"  # PROTO 2


# --- processes started by the code under test ------------------------------------------------------

_SPAWN_EVENTS = frozenset({"os.system", "subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
                           "os.forkpty"})
_spawned: list | None = None


def _record_spawn(event: str, args: tuple) -> None:
    if _spawned is not None and event in _SPAWN_EVENTS:
        _spawned.append((event, args))


@pytest.fixture
def spawn_audit():
    """A list of every process the test starts, seen by an audit hook at the call itself: "nothing ran" is then
    asserted directly instead of sleeping and hoping a spawned command would have finished."""
    global _spawned
    if not getattr(sys, "_athelas_spawn_hook", False):
        sys.addaudithook(_record_spawn)  # audit hooks cannot be removed: installed once, gated by `_spawned`
        sys._athelas_spawn_hook = True
    _spawned = []
    try:
        yield _spawned
    finally:
        _spawned = None


# --- fuzz counter ----------------------------------------------------------------------------------

_RUN = "ATHELAS_FUZZ_RUN"


def pytest_configure(config):
    os.environ.setdefault(_RUN, uuid.uuid4().hex[:12])  # set before xdist workers start: they inherit it


def _count_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"athelas-fuzz-count-{os.environ[_RUN]}"


@pytest.fixture(scope="session")
def fuzz_counter():
    """A Counter of corrupted inputs tried, per kind; each process writes its share at the end."""
    counts: Counter = Counter()
    yield counts
    if counts:
        d = _count_dir()
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}.json").write_text(json.dumps(counts))


def pytest_sessionfinish(session, exitstatus):
    if hasattr(session.config, "workerinput"):
        return  # an xdist worker: the controller sums
    changed = _tree_changes(session.config)
    if changed:  # tests write to tmp_path, never into the checkout
        session.config._athelas_tree_changed = changed
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    d = _count_dir()
    if not d.is_dir():
        return
    total: Counter = Counter()
    for f in d.glob("*.json"):
        total.update(json.loads(f.read_text()))
    shutil.rmtree(d, ignore_errors=True)
    tried = sum(v for k, v in total.items() if not k.startswith("outcome"))
    lines = [f"total {tried}"] + [f"{k} {v}" for k, v in sorted(total.items())]
    session.config._athelas_fuzz = lines


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    changed = getattr(config, "_athelas_tree_changed", None)
    if changed:
        terminalreporter.write_line(f"FAILED: the tests changed {len(changed)} file(s) of the working tree: "
                                    + ", ".join(changed[:10]), red=True)
    lines = getattr(config, "_athelas_fuzz", None)
    if lines:
        terminalreporter.write_line("corrupted inputs tried: " + ", ".join(lines))


# --- the working tree is left alone ------------------------------------------------------------------

_NOT_TREE = {".git", ".venv", "__pycache__", ".ruff_cache", "build"}


def _tree_snapshot() -> dict[str, tuple[int, int]]:
    """(mtime, size) of every file of the checkout, less the virtualenv, git's own files and bytecode."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in _NOT_TREE and not d.endswith(".egg-info")]
        for name in filenames:
            path = os.path.join(dirpath, name)
            with contextlib.suppress(OSError):
                st = os.stat(path)
                snap[os.path.relpath(path, ROOT)] = (st.st_mtime_ns, st.st_size)
    return snap


def pytest_sessionstart(session):
    if not hasattr(session.config, "workerinput"):
        session.config._athelas_tree = _tree_snapshot()


def _tree_changes(config) -> list[str]:
    before = getattr(config, "_athelas_tree", None)
    if before is None:
        return []
    after = _tree_snapshot()
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
