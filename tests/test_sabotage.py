"""Deliberately wrong rule sets must fail the gate, and the runner must name the module they broke.

Each test copies `mappings/` into a temporary directory, edits the BimodalCNN v1->v2
rules, and points the engine at the copy (monkeypatching `rules.graph.mappings_root`
and clearing the cached rule files). Migration then follows the wrong rules, as a
bad pull request would, and the verification runs with them too (its rename map,
used for pairing, is wrong in the same way).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

import legacy
from athelas_migrate import api
from athelas_migrate.equivalence import run_verify
from athelas_migrate.rules import graph

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures"
V1 = next(e for e in json.loads((FIX / "manifest.json").read_text()) if e["file"] == "bimodal_cnn_v1.ckpt")
CONVS_RULE = "match = '^text_subnetwork\\.(embeddings\\.weight|convs\\..*)$'"
SWAP_RULES = """
[[rules]]
id = "sabotage-swap-0"
op = "rename"
match = '^text_subnetwork\\.convs\\.0\\.(.*)$'
to = 'text_encoder.convs.1.\\1'

[[rules]]
id = "sabotage-swap-1"
op = "rename"
match = '^text_subnetwork\\.convs\\.1\\.(.*)$'
to = 'text_encoder.convs.0.\\1'
"""


@pytest.fixture
def sabotage(tmp_path, monkeypatch):
    """sabotage(edit) -> mappings root whose BimodalCNN/v1-v2.toml is edit(original text); active until teardown."""

    def make(edit):
        root = tmp_path / "mappings"
        shutil.copytree(ROOT / "mappings", root, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
        rules = root / "BimodalCNN" / "v1-v2.toml"
        text = rules.read_text()
        assert CONVS_RULE in text
        rules.write_text(edit(text))
        monkeypatch.setattr(graph, "mappings_root", lambda: root)
        graph.load_rule_files.cache_clear()
        return root

    yield make
    graph.load_rule_files.cache_clear()


def _swap(text: str) -> str:
    return text.replace(CONVS_RULE, "match = '^text_subnetwork\\.(embeddings\\.weight)$'") + SWAP_RULES


def _gate(tmp_path: Path, entries: list[dict]) -> tuple[int, dict]:
    spec = importlib.util.spec_from_file_location("athelas_gate", ROOT / "tools" / "gate.py")
    gate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gate)
    manifest = tmp_path / "sabotage-manifest.json"
    manifest.write_text(json.dumps(entries))
    out = tmp_path / "gate"
    code = gate.main(["--out", str(out), "--manifest", str(manifest)])
    return code, json.loads((out / "gate-report.json").read_text())


def test_swapped_conv_branches_fail_the_gate_and_are_localised(sabotage, tmp_path):
    # Two branches of the same kernel size, so the swap passes the engine's shape validation.
    config = {"text_name": "dialogue", "text_input_ids_key": "input_ids", "label_name": "label",
              "tab_field_list": ["a", "b"], "kernel_size": [3, 3],
              "num_layers": 2, "num_channels": [6, 6], "hidden_common_dim": 8, "max_sen_len": 30,
              "dropout_keep": 0.1, "embed_size": 8}
    torch.manual_seed(0)
    model = legacy.BimodalCNN(copy.deepcopy(config), 20, torch.randn(20, 8))
    src = tmp_path / "same_kernels_v1.pt"
    torch.save(model.state_dict(), src)

    sabotage(_swap)
    dst = tmp_path / "swapped.v2.ckpt"
    api.migrate(src, dst, overrides=config)  # the wrong rules are consistent: the engine accepts them
    report = run_verify(src, dst, overrides=config, domain=False)
    assert not report.passed and report.exit_code == 1
    assert not report.outputs["logits"].passed
    loc = report.localisation
    assert loc["module"].startswith("text_encoder.convs.0"), loc
    assert loc["old_module"].startswith("text_subnetwork.convs.0") and loc["kind"] == "order"

    code, data = _gate(tmp_path, [{"file": str(src), "family": "BimodalCNN", "version": "v1", "overrides": config}])
    assert code == 1 and data["passed"] is False
    row = data["fixtures"][0]
    assert row["status"] == "failed" and "text_encoder.convs.0" in row["reason"]
    assert row["report"]["localisation"]["module"].startswith("text_encoder.convs.0")


def transpose_square_weight(text: str) -> str:
    """One wrong rule: convs.0.3.weight is [8, 8, 3], so transposing dims 0 and 1 keeps its shape."""
    keep = "match = '^text_subnetwork\\.(embeddings\\.weight|convs\\.(?!0\\.3\\.weight$).*)$'"
    text = text.replace(CONVS_RULE, keep)
    return text + """
[[rules]]
id = "sabotage-transpose"
op = "transpose"
match = '^text_subnetwork\\.convs\\.0\\.3\\.weight$'
to = 'text_encoder.convs.0.3.weight'
dims = [0, 1]
"""


def test_transposed_square_weight_fails_and_is_localised(sabotage, tmp_path):
    sabotage(transpose_square_weight)
    dst = tmp_path / "transposed.v2.ckpt"
    api.migrate(FIX / V1["file"], dst, overrides=V1["overrides"])
    report = run_verify(FIX / V1["file"], dst, overrides=V1["overrides"], domain=False)
    assert not report.passed and report.exit_code == 1
    loc = report.localisation
    assert loc["module"] == "text_encoder.convs.0.3" and loc["old_module"] == "text_subnetwork.convs.0.3"
    assert loc["kind"] == "computes differently" and loc["type"] == "Conv1d"
    assert any("transpose" in n for n in report.section("weights").notes)
    assert report.check("training", "gradients").status == "fail"

    code, data = _gate(tmp_path, [dict(V1, file=str(FIX / V1["file"]), io=str(FIX / V1["io"]))])
    assert code == 1 and data["fixtures"][0]["status"] == "failed"
    assert data["fixtures"][0]["report"]["localisation"]["module"] == "text_encoder.convs.0.3"


def test_branch_swap_across_kernel_sizes_is_refused_and_fails_the_gate(sabotage, tmp_path):
    sabotage(_swap)  # kernels [3, 5]: the swapped weights no longer fit, the engine refuses to write
    code, data = _gate(tmp_path, [dict(V1, file=str(FIX / V1["file"]), io=str(FIX / V1["io"]))])
    assert code == 1
    row = data["fixtures"][0]
    assert row["status"] == "error" and row["reason"].startswith("migrate:") and "shape" in row["reason"]
