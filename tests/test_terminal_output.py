"""Default output of every command stays readable at 80 columns and when piped: no line wider than the
terminal, no identifier split across lines, no colour codes in a pipe."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import FIXTURES

V1 = FIXTURES / "bimodal_cnn_v1.ckpt"
SETS = ("--set", "tab_field_list=ttm_conc_count,net_conc_amt,days_since_first_txn")


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "80", "TERM": "xterm-256color"}
    return subprocess.run([sys.executable, "-m", "athelas_migrate", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd)


def assert_readable(text: str, identifiers: list[str] = ()) -> None:
    assert "\x1b[" not in text  # piped: no colour codes
    lines = text.splitlines()
    too_wide = [line for line in lines if len(line) > 80 and not any(i in line for i in identifiers)]
    assert not too_wide, too_wide
    for ident in identifiers:  # whole on one line, never split mid-identifier
        assert any(ident in line for line in lines), ident


@pytest.mark.parametrize("command", ["audit", "inspect", "ckpt", "history"])
def test_default_output_at_80_columns_and_piped(command, tmp_path):
    import torch

    keys = list(torch.load(V1, weights_only=True)["state_dict"])
    if command == "audit":
        proc = run("audit", V1, *SETS)
        assert_readable(proc.stdout, keys)
        assert proc.stdout.count("\n") < 100  # a key per line, grouped by rule: not a 174-line table
    elif command == "inspect":
        proc = run("inspect", V1)
        assert_readable(proc.stdout)
        assert "tab_field_list: the names of the 3 tabular input fields" in " ".join(proc.stdout.split())
    elif command == "ckpt":
        proc = run("ckpt", V1, tmp_path / "new.ckpt", *SETS)
        assert_readable(proc.stdout)
    else:
        proc = run("history")
        assert_readable(proc.stdout)
    assert proc.returncode == 0, proc.stderr


def test_audit_markdown_has_a_summary_and_grouped_hparam_moves(tmp_path):
    out = tmp_path / "audit.md"
    proc = run("audit", FIXTURES / "multimodal_cnn_v0.ckpt", "--format", "md", "-o", out)
    assert proc.returncode == 0 and f"wrote {out}" in proc.stderr
    text = out.read_text()
    assert "## Summary" in text and "| renamed |" in text and "source values sha256" in text
    again = run("audit", FIXTURES / "multimodal_cnn_v0.ckpt", "--format", "md", "-o", out)
    assert again.returncode == 2 and "--force" in again.stderr  # an existing report is never silently replaced
    assert run("audit", FIXTURES / "multimodal_cnn_v0.ckpt", "--format", "md", "-o", out, "--force").returncode == 0
