"""The same conventions in every command: fast refusals before heavy imports, --json errors as JSON, outputs
replaced only with --force, global flags in any position, -V."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import FIXTURES

V1 = FIXTURES / "bimodal_cnn_v1.ckpt"
FUSION = FIXTURES / "fusion_gate_v1.ckpt"

# Runs the CLI in-process, then says which heavy modules the refusal imported.
_PROBE = """
import sys
from athelas_migrate.cli import main
try:
    main(sys.argv[1:], standalone_mode=True)
except SystemExit as e:
    code = e.code
heavy = sorted(m for m in ("torch", "lightning", "transformers", "onnxruntime") if m in sys.modules)
print("RESULT", code, ",".join(heavy) or "-", file=sys.stderr)
"""


def probe(*args) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-c", _PROBE, *map(str, args)], capture_output=True, text=True)
    line = [x for x in proc.stderr.splitlines() if x.startswith("RESULT ")][-1].split()
    return int(line[1]), line[2], proc.stderr


@pytest.mark.parametrize("args,code", [
    (("ckpt", "{missing}", "{tmp}/n.ckpt"), 3),
    (("verify", "{missing}", "{tmp}/n.ckpt"), 3),
    (("export", "{missing}", "{tmp}/n.onnx"), 3),
    (("predict", "{missing}", "{tmp}/d.csv", "-o", "{tmp}/p.tsv"), 3),
    (("audit", "{missing}"), 3),
    (("ckpt", str(FUSION), "{tmp}/n.ckpt", "--set", "labelname=x"), 2),
    (("verify", str(FUSION), str(FUSION), "--set", "hiden_common_dim=9"), 2),
    (("export", str(FUSION), "{tmp}/n.onnx", "--set", "tab_field_list=[a,b]"), 2),
])  # fmt: skip
def test_refusals_come_before_heavy_imports(args, code, tmp_path):
    filled = [a.format(missing=tmp_path / "missing.ckpt", tmp=tmp_path) for a in args]
    got, heavy, stderr = probe(*filled)
    assert got == code, stderr
    assert heavy == "-", f"{args[0]} imported {heavy} before refusing"


def test_json_mode_errors_are_json(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "athelas_migrate", "ckpt", str(V1), str(tmp_path / "n.ckpt"),
                           "--json"], capture_output=True, text=True)
    assert proc.returncode == 3
    data = json.loads(proc.stdout)
    assert data["exit_code"] == 3 and data["kind"] == "MissingInformationError"
    assert [n["key"] for n in data["needs"]] == ["tab_field_list"]


def test_global_flags_anywhere_and_version():
    proc = subprocess.run([sys.executable, "-m", "athelas_migrate", "ckpt", str(V1), "/nonexistent/x.ckpt",
                           "--set", "labelname=x", "--debug"], capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr  # --debug after the command still applies
    version = subprocess.run([sys.executable, "-m", "athelas_migrate", "-V"], capture_output=True, text=True)
    assert version.returncode == 0 and "version" in version.stdout


def test_loading_the_cli_imports_nothing_heavy():
    """Every command module is registered at start-up: none of them may pull torch & co. in with it (a package
    __init__ that imports its engine eagerly did, and made every command, even `--help`, pay for torch)."""
    code = ("import sys, athelas_migrate.cli; "
            "print(','.join(m for m in ('torch', 'lightning', 'transformers', 'jinja2', 'matplotlib', 'onnx') "
            "if m in sys.modules) or '-')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "-", proc.stdout + proc.stderr
