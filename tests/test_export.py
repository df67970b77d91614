"""``athelas-migrate export``: ONNX export of the three CNN families with a parity check.

Every exported file is checked here again, independently of the exporter's own
check: onnx.checker, input names, dynamic axes, and ONNX Runtime against the
PyTorch model on inputs (batch sizes, sequence lengths) the exporter did not use.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from athelas_migrate import export as export_mod
from athelas_migrate.cli import main
from athelas_migrate.errors import UsageError
from athelas_migrate.models import BimodalCNN, TabAE, TextCNN

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MANIFEST = {e["file"]: e for e in json.loads((FIXTURES / "manifest.json").read_text())}
FIELDS = ["a", "b", "c"]
V, E, L = 50, 8, 40


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def config(**over):
    cfg = {"text_name": "doc", "label_name": "y", "tab_field_list": FIELDS, "kernel_size": [3, 5],
           "num_channels": [6, 7], "num_layers": 2, "hidden_common_dim": 5, "max_sen_len": L,
           "dropout_keep": 0.3}
    cfg.update(over)
    return cfg


def save_v2(model, path: Path) -> Path:
    """A v2 checkpoint as Lightning writes it (state dict, hyper-parameters, layout stamp)."""
    ckpt = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": lightning.__version__, "epoch": 0, "global_step": 0}
    model.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path


def build(name: str):
    torch.manual_seed(0)
    if name == "TextCNN":
        return TextCNN(config(tab_field_list=None, hidden_common_dim=2), vocab_size=V, embed_size=E)
    if name == "TabAE":
        return TabAE(config())
    return BimodalCNN(config(), vocab_size=V, embed_size=E)


# the models' batch keys, so a batch dict feeds the ONNX session as it is
EXPECTED_INPUTS = {"TextCNN": ["doc_input_ids"], "TabAE": FIELDS, "BimodalCNN": ["doc_input_ids", *FIELDS]}


def ort_vs_torch(onnx_path: Path, model, names: list[str], batch: int, seq: int | None) -> float:
    """Max |ORT - PyTorch| on fresh random inputs, computed without the exporter's code."""
    gen = torch.Generator().manual_seed(1234 + batch)
    model = model.float().eval()
    if not hasattr(model, "text_encoder"):  # TabAE: one [B] input per field
        x = torch.randn(batch, model.input_tab_dim, generator=gen)
        feeds, expected = {f: x[:, i].numpy() for i, f in enumerate(names)}, model(x)
    else:
        ids = torch.randint(0, model.text_encoder.embeddings.num_embeddings, (batch, seq), generator=gen)
        feeds = {names[0]: ids.numpy()}
        batch_dict = {names[0]: ids}
        for f in names[1:]:
            v = torch.randn(batch, generator=gen) * 2
            feeds[f] = v.numpy()
            batch_dict[f] = v
        expected = model(batch_dict)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, feeds)[0]
    return float(np.abs(got - expected.detach().numpy()).max())


@pytest.mark.parametrize("name", ["TextCNN", "TabAE", "BimodalCNN"])
def test_export_v2_models(tmp_path, name):
    model = build(name)
    ckpt = save_v2(model, tmp_path / f"{name}.ckpt")
    out = tmp_path / f"{name}.onnx"
    r = cli("export", ckpt, out)
    assert r.exit_code == 0, r.output
    assert "parity OK" in r.output and "max abs diff" in r.output
    onnx.checker.check_model(str(out), full_check=True)
    graph = onnx.load(str(out)).graph
    names = [i.name for i in graph.input]
    assert names == EXPECTED_INPUTS[name]
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert dims[names[0]][0] == "batch"  # dynamic batch axis
    if name == "TabAE":
        assert all(dims[f] == ["batch"] for f in FIELDS)
    else:
        assert dims[names[0]] == ["batch", "sequence"]  # dynamic sequence axis
        for f in names[1:]:
            assert dims[f] == ["batch"]  # each tabular field is a [B] tensor
    model.eval()
    seqs = [None] if name == "TabAE" else [L, 33, 70]
    for seq in seqs:
        for batch in (1, 7):
            assert ort_vs_torch(out, model, names, batch, seq) < 1e-5
    assert sorted(os.listdir(tmp_path)) == sorted([ckpt.name, out.name])  # no temporary left


@pytest.mark.parametrize("fixture,expected", [
    ("text_cnn_v1.ckpt", ["dialogue_input_ids"]),
    ("tab_ae_v1.ckpt", ["ttm_conc_count", "net_conc_amt", "days_since_first_txn"]),
    ("bimodal_cnn_v1.ckpt", ["dialogue_input_ids", "ttm_conc_count", "net_conc_amt", "days_since_first_txn"]),
    ("multimodal_cnn_v0.ckpt", ["dialogue_processed_input_ids", "ttm_conc_count", "net_conc_amt",
                                "days_since_first_txn"]),
    ("bimodal_cnn_v1_notab.ckpt", ["dialogue_input_ids"]),
])  # fmt: skip
def test_export_legacy_checkpoints_match_the_legacy_outputs(tmp_path, fixture, expected):
    """Legacy files are migrated in memory; ONNX reproduces the recorded legacy outputs."""
    entry = MANIFEST[fixture]
    sets = []
    for key, value in entry["overrides"].items():
        sets += ["--set", f"{key}={json.dumps(value)}"]
    out = tmp_path / "m.onnx"
    r = cli("export", FIXTURES / fixture, out, *sets)
    assert r.exit_code == 0, r.output
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == expected
    io = torch.load(FIXTURES / entry["io"], map_location="cpu", weights_only=True)
    inputs = io["inputs"]
    if isinstance(inputs, dict):
        feeds = {n: inputs[n].numpy() if n.endswith("input_ids") else inputs[n].float().numpy() for n in expected}
    elif fixture.startswith("tab_ae"):
        feeds = {n: inputs[:, i].float().numpy() for i, n in enumerate(expected)}
    else:
        feeds = {expected[0]: inputs.numpy()}
    got = sess.run(None, feeds)[0]
    np.testing.assert_allclose(got, io["outputs"].float().numpy(), atol=1e-5, rtol=0)


def _perturbing_export(real_export):
    """torch.onnx.export, then add 1e-3 to the exported graph's last float initializer (a bias)."""

    def wrapped(*args, **kwargs):
        result = real_export(*args, **kwargs)
        path = args[2] if len(args) > 2 else kwargs["f"]
        proto = onnx.load(path)
        init = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT][-1]
        arr = onnx.numpy_helper.to_array(init) + np.float32(1e-3)
        init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
        onnx.save(proto, path)
        return result

    return wrapped


@pytest.mark.parametrize("name", ["TextCNN", "BimodalCNN"])
def test_parity_mismatch_exits_1_and_leaves_no_file(tmp_path, monkeypatch, name):
    ckpt = save_v2(build(name), tmp_path / "m.ckpt")
    monkeypatch.setattr(torch.onnx, "export", _perturbing_export(torch.onnx.export))
    out = tmp_path / "m.onnx"
    r = cli("export", ckpt, out)
    assert r.exit_code == 1, r.output
    assert "disagree" in r.output
    assert not out.exists()
    assert os.listdir(tmp_path) == ["m.ckpt"]  # the temporary file is gone too


def test_tolerance_is_the_comparison(tmp_path):
    """With the tolerance below the real float error the same export fails; at the default it passes."""
    ckpt = save_v2(build("BimodalCNN"), tmp_path / "m.ckpt")
    r = cli("export", ckpt, tmp_path / "tight.onnx", "--atol", "1e-12")
    assert r.exit_code == 1 and not (tmp_path / "tight.onnx").exists()
    r = cli("export", ckpt, tmp_path / "m.onnx", "--atol", "-1")
    assert r.exit_code == 2
    with pytest.raises(export_mod.ValidationError):
        export_mod.export_onnx(str(ckpt), str(tmp_path / "api.onnx"), atol=1e-12)
    assert not (tmp_path / "api.onnx").exists()
    assert export_mod.export_onnx(str(ckpt), str(tmp_path / "api.onnx")).max_abs_diff <= 1e-5


def test_existing_output_needs_force(tmp_path):
    ckpt = save_v2(build("TabAE"), tmp_path / "m.ckpt")
    out = tmp_path / "m.onnx"
    out.write_bytes(b"keep me")
    r = cli("export", ckpt, out)
    assert r.exit_code == 2 and out.read_bytes() == b"keep me"
    r = cli("export", ckpt, out, "--force")
    assert r.exit_code == 0 and out.read_bytes() != b"keep me"
    r = cli("export", ckpt, tmp_path / "missing_dir" / "m.onnx")  # parents are created, as by every command
    assert r.exit_code == 0 and (tmp_path / "missing_dir" / "m.onnx").exists()
    r = cli("export", tmp_path / "nope.ckpt", tmp_path / "x.onnx")
    assert r.exit_code == 3


def test_input_spec_registry_plugs_in_new_families(tmp_path):
    class TextCNNVariant(TextCNN):
        pass

    model = TextCNNVariant(config(tab_field_list=None, hidden_common_dim=2), vocab_size=V, embed_size=E).eval()
    # Found along the MRO: the TextCNN spec serves the subclass.
    assert export_mod.input_spec_for(model).names == ["doc_input_ids"]
    calls = []

    @export_mod.register_input_spec("TextCNNVariant")
    def _spec(m):
        calls.append(m)
        from athelas_migrate.families.cnn.onnx import text_cnn_spec

        spec = text_cnn_spec(m)
        spec.names = ["tokens"]
        spec.dynamic_axes = {"tokens": {0: "batch", 1: "sequence"}, "logits": {0: "batch"}}
        return spec

    try:
        result = export_mod.export_onnx(None, str(tmp_path / "v.onnx"), model=model)
        assert calls and result.input_names == ["tokens"] and result.ok
        assert [i.name for i in onnx.load(str(tmp_path / "v.onnx")).graph.input] == ["tokens"]
    finally:
        del export_mod.INPUT_SPECS["TextCNNVariant"]

    class Unknown(torch.nn.Module):
        pass

    with pytest.raises(UsageError, match="no ONNX input spec"):
        export_mod.input_spec_for(Unknown())
