"""ONNX export of the BERT fusion families (from legacy fixtures, migrated in memory) with ONNX Runtime
parity, checked here again on inputs the exporter did not use; the trace-friendly ConcatenationFusion."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from athelas_migrate.cli import main
from athelas_migrate.components import ConcatenationFusion
from athelas_migrate.predict import load_any_model

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
BY_FILE = {e["file"]: e for e in json.loads((FIXTURES / "fusion_manifest.json").read_text())}
TAB = ["age", "amount", "score"]


def _sets(entry) -> list[str]:
    out = []
    for key, value in {**entry["overrides"], "bert_config": entry["bert_config"]}.items():
        out += ["--set", f"{key}={json.dumps(value)}"]
    return out


def _texts(name: str, batch: int, chunks: int, seq: int, full: bool, gen) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 100, (batch, chunks, seq), generator=gen)
    mask = torch.ones(batch, chunks, seq, dtype=torch.long)
    if not full:  # ragged chunks, and a fully padded one
        lengths = torch.randint(1, seq + 1, (batch, chunks), generator=gen)
        mask = (torch.arange(seq).view(1, 1, -1) < lengths.unsqueeze(-1)).long()
        if chunks > 1:
            mask[-1, -1] = 0
        ids = ids.masked_fill(mask == 0, 0)
    return {f"{name}_input_ids": ids, f"{name}_attention_mask": mask}


@pytest.mark.parametrize("fixture,texts", [
    ("fusion_gate_v1.ckpt", ["dialogue"]),
    ("fusion_trimodal_v1.ckpt", ["chat", "ship"]),
])  # fmt: skip
def test_export_legacy_fusion_fixture_with_parity(tmp_path, fixture, texts):
    entry = BY_FILE[fixture]
    out = tmp_path / "m.onnx"
    if len(texts) == 1:  # everything through --set
        args = _sets(entry)
    else:  # the BERT config from a config.json file
        (tmp_path / "bert.json").write_text(json.dumps(entry["bert_config"]))
        args = [a for k, v in entry["overrides"].items() for a in ("--set", f"{k}={json.dumps(v)}")]
        args += ["--bert-config", str(tmp_path / "bert.json")]
    r = CliRunner().invoke(main, ["export", str(FIXTURES / fixture), str(out), *args])
    assert r.exit_code == 0, r.output
    assert "parity OK" in r.output and "opset 17" in r.output
    onnx.checker.check_model(str(out), full_check=True)
    graph = onnx.load(str(out)).graph
    names = [n for t in texts for n in (f"{t}_input_ids", f"{t}_attention_mask")] + TAB
    assert [i.name for i in graph.input] == names
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    for t in texts:
        assert dims[f"{t}_input_ids"] == dims[f"{t}_attention_mask"] == ["batch", f"{t}_chunks", f"{t}_sequence"]
    assert all(dims[f] == ["batch"] for f in TAB)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])

    # the recorded legacy outputs
    io = torch.load(FIXTURES / entry["io"], weights_only=True)
    got = sess.run(None, {n: io["inputs"][n].numpy() for n in names})[0]
    np.testing.assert_allclose(got, io["outputs"].numpy(), atol=1e-5, rtol=0)

    # fresh inputs: batch 1 and 5, 1 or 4 chunks, other lengths per text, full and padded masks
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_any_model(str(FIXTURES / fixture), {**entry["overrides"], "bert_config": entry["bert_config"]})
    gen = torch.Generator().manual_seed(7)
    worst = 0.0
    for batch, chunks, seq, full in ((1, 1, 9, True), (5, 4, 20, False), (2, 3, 3, False)):
        feed: dict[str, torch.Tensor] = {}
        for i, t in enumerate(texts):
            feed.update(_texts(t, batch, chunks + i, seq - 2 * i, full, gen))
        feed.update({f: torch.randn(batch, generator=gen) * 10 ** (k - 1) for k, f in enumerate(TAB)})
        with torch.no_grad():
            expected = model(feed).numpy()
        got = sess.run(None, {n: feed[n].numpy() for n in names})[0]
        worst = max(worst, float(np.abs(got - expected).max()))
    assert worst <= 1e-5, worst


def test_bert_export_needs_opset_14(tmp_path):
    entry = BY_FILE["fusion_moe_v1.ckpt"]
    out = tmp_path / "m.onnx"
    r = CliRunner().invoke(main, ["export", str(FIXTURES / entry["file"]), str(out), "--opset", "13",
                                  *_sets(entry)])
    assert r.exit_code == 2, r.output
    assert "opset >= 14" in r.output and not out.exists()


def test_concatenation_fusion_traces_and_still_checks_batch_sizes():
    fusion = ConcatenationFusion([4, 3], 2).eval()
    a, b = torch.randn(5, 4), torch.randn(5, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)  # no shape check frozen into the trace
        traced = torch.jit.trace(fusion, (a, b))
    a2, b2 = torch.randn(2, 4), torch.randn(2, 3)
    assert torch.equal(traced(a2, b2), fusion(a2, b2))
    with pytest.raises(ValueError, match="disagree on batch size"):
        fusion(torch.randn(2, 4), torch.randn(3, 3))
