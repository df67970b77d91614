"""`athelas-migrate rules infer`: writes a proven rule file, prints the proof, refuses with documented codes."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib

import pytest
import torch

from tests.conftest import ROOT


@pytest.fixture
def batch(tmp_path):
    g = torch.Generator().manual_seed(3)
    path = tmp_path / "batch.pt"
    torch.save([torch.randn(3, 8, generator=g) for _ in range(4)], path)
    return path


def test_infer_writes_rule_file_with_proof_and_evidence(cli, tmp_path, batch):
    args = tmp_path / "new.json"
    args.write_text('{"classes": 4}')
    (tmp_path / "old.json").write_text('{"classes": 4}')
    out = tmp_path / "mappings" / "MyModel" / "v2-v3.toml"
    code, stdout, stderr = cli("rules", "infer", "--old", "tests.infer_pairs:OldNested", "--old-args",
                               tmp_path / "old.json", "--new", "tests.infer_pairs:NewNested", "--new-args", args,
                               "--inputs", batch, "-o", out, "--explain")
    assert code == 0, stderr
    data = tomllib.loads(out.read_text())
    assert (data["family"], data["from"], data["to"]) == ("MyModel", "v2", "v3")
    assert "input 0 output 0: max |diff| 0" in stdout and "input 1 output 0" in stdout
    assert "heads.1-to-heads.aux:" in stdout and "recorded inputs it returns the same outputs" in stdout


def test_infer_refusal_is_one_line_exit_1_and_writes_nothing(cli, tmp_path, batch):
    out = tmp_path / "Head" / "v1-v2.toml"
    code, stdout, stderr = cli("rules", "infer", "--old", "tests.infer_pairs:ReluHead", "--new",
                               "tests.infer_pairs:GeluHead", "--inputs", batch, "-o", out)
    assert code == 1 and "first divergent module: out" in stderr
    assert len(stderr.strip().splitlines()) == 1 and not out.exists()


def test_infer_usage_input_and_output_errors(cli, tmp_path, batch):
    common = ["--old", "tests.infer_pairs:OldNested", "--new", "tests.infer_pairs:NewNested"]
    out = tmp_path / "M" / "v1-v2.toml"
    out.parent.mkdir()
    out.write_text("keep me")
    assert cli("rules", "infer", *common, "--inputs", batch, "-o", out)[0] == 2  # exists, no --force
    assert out.read_text() == "keep me"
    assert cli("rules", "infer", "--old", "no_such_module:X", "--new", "tests.infer_pairs:NewNested",
               "--inputs", batch, "-o", tmp_path / "M" / "v3-v4.toml")[0] == 2
    assert cli("rules", "infer", *common, "--inputs", batch, "-o", tmp_path / "unnamed.toml")[0] == 2
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    assert cli("rules", "infer", *common, "--inputs", junk, "-o", tmp_path / "M" / "v5-v6.toml")[0] == 3
    empty = tmp_path / "empty.pt"
    torch.save([], empty)
    assert cli("rules", "infer", *common, "--inputs", empty, "-o", tmp_path / "M" / "v5-v6.toml")[0] == 3
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, stderr = cli("rules", "infer", *common, "--inputs", batch, "-o", blocker / "F" / "v1-v2.toml")
    assert code == 4 and "cannot write" in stderr


def test_infer_through_the_installed_entry_point(tmp_path, batch):
    out = tmp_path / "Nested" / "v1-v2.toml"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "athelas_migrate", "rules", "infer", "--old",
                           "tests.infer_pairs:OldNested", "--new", "tests.infer_pairs:NewNested", "--inputs",
                           str(batch), "-o", str(out)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert tomllib.loads(out.read_text())["family"] == "Nested"
