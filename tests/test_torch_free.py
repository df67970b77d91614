"""The migration path never imports torch, Lightning or transformers, for any family: detection, layouts, rules
and writing are pure Python (BERT layouts are computed from the config, see families/layout.py). Every fixture is
migrated, rolled back, audited and inspected (and one batch run) by the in-process CLI in one subprocess, which
then reports what got imported."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import FIXTURES

HEAVY = ("torch", "lightning", "transformers", "onnxruntime")

_PROBE = """
import json, sys
from athelas_migrate.cli import main

def run(*args):
    try:
        main(list(args), standalone_mode=False)
    except SystemExit as exc:
        if exc.code:
            raise
    heavy = sorted(m for m in HEAVY if m in sys.modules)
    assert not heavy, f"{args[0]} {args[1] if len(args) > 1 else ''} imported {heavy}"

HEAVY = json.loads(sys.argv[2])
for job in json.loads(sys.argv[1]):
    run(*job)
print("TORCH-FREE", len(json.loads(sys.argv[1])))
"""


def _jobs(tmp_path) -> list[list[str]]:
    jobs: list[list[str]] = [["history"]]
    for manifest in ("manifest.json", "fusion_manifest.json", "names3risk_manifest.json"):
        for entry in json.loads((FIXTURES / manifest).read_text()):
            src = str(FIXTURES / entry["file"])
            config = tmp_path / f"{entry['file']}.json"
            overrides = {**entry["overrides"], **({"bert_config": entry["bert_config"]} if "bert_config" in entry
                                                  else {})}
            config.write_text(json.dumps(overrides))
            jobs += [["inspect", src, "--json"],
                     ["audit", src, "--config", str(config), "-o", str(tmp_path / f"{entry['file']}.audit")],
                     ["ckpt", src, str(tmp_path / f"{entry['file']}.v2.ckpt"), "--config", str(config)]]
            if manifest != "names3risk_manifest.json":  # their rollback computes w1 - w0 (narrow_head): torch
                jobs.append(["ckpt", str(tmp_path / f"{entry['file']}.v2.ckpt"),
                             str(tmp_path / f"{entry['file']}.back.ckpt"), "--to", entry["version"]])
    batch_in = tmp_path / "batch_in"
    batch_in.mkdir()
    (batch_in / "gate.ckpt").write_bytes((FIXTURES / "fusion_gate_v1.ckpt").read_bytes())
    jobs.append(["batch", str(batch_in), str(tmp_path / "batch_out"), "--config",
                 str(tmp_path / "fusion_gate_v1.ckpt.json"), "--jobs", "1"])
    return jobs


def test_ckpt_audit_inspect_history_of_every_fixture_import_no_torch(tmp_path):
    jobs = _jobs(tmp_path)
    proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(jobs), json.dumps(HEAVY)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0 and f"TORCH-FREE {len(jobs)}" in proc.stdout, proc.stderr[-3000:]
    assert (tmp_path / "batch_out" / "gate.ckpt").exists()
    assert all((tmp_path / f"{e['file']}.v2.ckpt").exists()
               for m in ("fusion_manifest.json", "names3risk_manifest.json")
               for e in json.loads((FIXTURES / m).read_text()))


_FLOATS = [0, 1, -2.5, 1 / 3, 65504.0, 1e-8]


@pytest.mark.parametrize("dtype,fill", [(d, f) for d in ("float32", "float64", "float16", "bfloat16") for f in _FLOATS]
                         + [("bfloat16", 3.0e38), ("int64", -7), ("int8", 100), ("bool", 1), ("float32", True)])
def test_constants_built_without_torch_equal_torch_full(dtype, fill):
    import torch

    from athelas_migrate.io.tensor_ref import TensorRef

    ours = TensorRef.full((2, 3), fill, dtype)
    theirs = TensorRef.from_torch(torch.full((2, 3), fill, dtype=getattr(torch, dtype)))
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    assert bytes(ours.raw_bytes()) == bytes(theirs.raw_bytes())


def test_a_constant_an_integer_dtype_cannot_hold_is_refused():
    from athelas_migrate.io.tensor_ref import TensorRef

    with pytest.raises(ValueError, match="not a int64"):
        TensorRef.full((2,), 1.5, "int64")


def test_widen_head_is_a_byte_copy_after_a_zero_row():
    import torch

    from athelas_migrate.io.tensor_ref import TensorRef
    from athelas_migrate.rules.ops.head import head_op as _head_op

    class Rule:
        op, source = "widen_head", "t.toml#head"

    for dtype in (torch.float32, torch.bfloat16):
        w = torch.randn(1, 5).to(dtype)
        out, _ = _head_op(Rule(), "net.12.weight", TensorRef.from_torch(w, True))
        assert out.is_parameter and out.shape == (2, 5)
        assert torch.equal(out.to_torch(), torch.cat([torch.zeros_like(w), w]))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "int64", "bool"])
def test_holds_constant_agrees_with_torch(dtype):
    import torch

    from athelas_migrate.io.tensor_ref import TensorRef

    cases = [torch.zeros(3, 2), -torch.zeros(3, 2), torch.ones(3, 2), torch.tensor([[0.0, 1.0]]), torch.zeros(0, 2)]
    for t in cases:
        t = t.to(getattr(torch, dtype))
        for fill in (0, 1):
            assert TensorRef.from_torch(t).holds_constant(fill) == bool((t == fill).all()), (t, fill)
