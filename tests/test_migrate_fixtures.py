"""Whole-checkpoint migration of every CNN fixture: layout, bitwise values, rollback, resume, audit, refusals."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
import torch

from athelas_migrate import api
from athelas_migrate.errors import (
    MalformedSourceError,
    MissingInformationError,
    OutputExistsError,
    UnknownLayoutError,
    UsageError,
)
from athelas_migrate.families import get_family
from athelas_migrate.io.reader import read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = [e for e in json.loads((ROOT / "fixtures" / "manifest.json").read_text())
            if e["family"] in ("BimodalCNN", "TextCNN", "TabAE")]
IDS = [e["file"] for e in MANIFEST]


@pytest.fixture(scope="module")
def migrated(tmp_path_factory):
    out = tmp_path_factory.mktemp("migrated")
    results = {}
    for e in MANIFEST:
        dst = out / (Path(e["file"]).stem + ".v2.ckpt")
        results[e["file"]] = (api.migrate(ROOT / "fixtures" / e["file"], dst, overrides=e["overrides"]), dst)
    return results


def _legacy_sd(entry):
    obj = torch.load(ROOT / "fixtures" / entry["file"], weights_only=True)
    return obj["state_dict"] if "state_dict" in obj else obj


@pytest.mark.parametrize("entry", MANIFEST, ids=IDS)
def test_migrated_loads_strictly_and_reproduces_legacy_outputs(entry, migrated):
    result, dst = migrated[entry["file"]]
    from athelas_migrate.families.base import load_class

    cls = load_class(result.family.v2_class)
    model = cls.load_from_checkpoint(dst).eval()  # plain Lightning loading, no extra arguments
    io = torch.load(ROOT / "fixtures" / entry["io"], weights_only=True)
    with torch.no_grad():
        out = model.float()(io["inputs"])
    assert torch.allclose(out, io["outputs"].float(), atol=1e-6, rtol=0)
    assert model.state_dict().keys() == torch.load(dst, weights_only=True)["state_dict"].keys()


@pytest.mark.parametrize("entry", MANIFEST, ids=IDS)
def test_renamed_tensors_are_bitwise_equal_and_keep_dtype(entry, migrated):
    result, dst = migrated[entry["file"]]
    old, new = _legacy_sd(entry), torch.load(dst, weights_only=True)["state_dict"]
    for tr in result.traces:
        if tr.target:
            assert new[tr.target].dtype == old[tr.source].dtype
            assert torch.equal(new[tr.target], old[tr.source]), tr.source
    assert list(new) == list(get_family(result.family.name).expected(result.config, "v2").shapes)


@pytest.mark.parametrize("entry", MANIFEST, ids=IDS)
def test_rollback_is_bitwise_and_loads_strictly_into_legacy(entry, migrated, tmp_path):
    result, dst = migrated[entry["file"]]
    back = tmp_path / "back.ckpt"
    api.migrate(dst, back, to=entry["version"])
    old, rolled = _legacy_sd(entry), torch.load(back, weights_only=True)
    assert list(rolled["state_dict"]) == list(old)
    for k in old:
        assert torch.equal(rolled["state_dict"][k], old[k]) and rolled["state_dict"][k].dtype == old[k].dtype, k
    if entry["kind"] == "lightning":
        orig = torch.load(ROOT / "fixtures" / entry["file"], weights_only=True)
        assert rolled["hyper_parameters"].keys() == orig["hyper_parameters"].keys()
        assert (rolled["epoch"], rolled["global_step"]) == (orig["epoch"], orig["global_step"])
        for a, b in zip(orig["optimizer_states"], rolled["optimizer_states"]):
            assert a["param_groups"] == b["param_groups"]
            assert a["state"].keys() == b["state"].keys()
            for pid in a["state"]:
                for name, v in a["state"][pid].items():
                    assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["state"][pid][name]))


def test_v0_text_batch_key_survives_unless_asked(tmp_path):
    src = ROOT / "fixtures" / "multimodal_cnn_v0.ckpt"
    io = torch.load(ROOT / "fixtures" / "multimodal_cnn_v0.io.pt", weights_only=True)
    kept = api.migrate(src, tmp_path / "a.ckpt")
    assert kept.hyper_parameters["config"]["text_batch_key"] == "dialogue_processed_input_ids"
    model = api.load_model(tmp_path / "a.ckpt")
    with torch.no_grad():
        # computed now vs computed when the fixture was made: other CPUs use other kernels (gate tolerance)
        torch.testing.assert_close(model(io["inputs"]), io["outputs"], rtol=0, atol=1e-5)
    new = api.migrate(src, tmp_path / "b.ckpt", overrides={"text_batch_key": None})
    assert not new.hyper_parameters["config"].get("text_batch_key")


def test_word_embeddings_copy_is_dropped_and_restored_on_rollback(tmp_path, migrated):
    result, dst = migrated["multimodal_cnn_v0.ckpt"]
    assert "word_embeddings" not in torch.load(dst, weights_only=True)["hyper_parameters"]
    api.migrate(dst, tmp_path / "v0.ckpt", to="v0")
    back = torch.load(tmp_path / "v0.ckpt", weights_only=True)
    emb = back["state_dict"]["text_subnetwork.embeddings.weight"]
    assert torch.equal(back["hyper_parameters"]["word_embeddings"], emb)
    assert back["hyper_parameters"]["word_embeddings"].untyped_storage().data_ptr() == emb.untyped_storage().data_ptr()


def test_stamp_provenance_and_noop(tmp_path, migrated):
    result, dst = migrated["bimodal_cnn_v1.ckpt"]
    stamp = torch.load(dst, weights_only=True)["athelas_migrate"]
    assert stamp["layout"] == "v2" and stamp["family"] == "BimodalCNN"
    prov = stamp["provenance"]
    assert prov["source_layout"] == "v1" and prov["rules"][0]["file"] == "BimodalCNN/v1-v2.toml"
    assert len(prov["rules"][0]["sha256"]) == 64 and prov["tool"].startswith("athelas-migrate")
    again = api.migrate(dst, tmp_path / "again.ckpt")
    assert again.noop and again.detection.evidence[0].startswith("layout stamp")
    assert (tmp_path / "again.ckpt").read_bytes() == dst.read_bytes()  # exit 0 means NEW exists: a verbatim copy
    with pytest.raises(OutputExistsError):
        api.migrate(dst, tmp_path / "again.ckpt")
    api.migrate(dst, tmp_path / "dry.ckpt", dry_run=True)
    assert not (tmp_path / "dry.ckpt").exists()


def test_safetensors_output_carries_metadata(tmp_path):
    from safetensors import safe_open

    e = next(x for x in MANIFEST if x["file"] == "bimodal_cnn_v1.ckpt")
    dst = tmp_path / "m.safetensors"
    api.migrate(ROOT / "fixtures" / e["file"], dst, overrides=e["overrides"])
    with safe_open(str(dst), "pt") as f:
        meta = f.metadata()
        assert json.loads(meta["athelas_migrate"])["layout"] == "v2"
        assert json.loads(meta["hyper_parameters"])["config"]["tab_field_list"] == e["overrides"]["tab_field_list"]
        assert torch.equal(f.get_tensor("fusion.fusion.1.weight"),
                           _legacy_sd(e)["final_merge_network.1.weight"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = api.load_model(dst)
    io = torch.load(ROOT / "fixtures" / e["io"], weights_only=True)
    with torch.no_grad():
        # computed now vs computed when the fixture was made: other CPUs use other kernels (gate tolerance)
        torch.testing.assert_close(model(io["inputs"]), io["outputs"], rtol=0, atol=1e-5)


def test_missing_field_names_stop_with_how_to_pass_them(tmp_path):
    with pytest.raises(MissingInformationError, match=r"(?s)tab_field_list: .*only their count \(3\).*--set "
                                                      r"'tab_field_list=\[") as err:
        api.migrate(ROOT / "fixtures" / "bimodal_cnn_v1.ckpt", tmp_path / "x.ckpt")
    assert [n.key for n in err.value.needs] == ["tab_field_list"]
    assert err.value.skeleton["max_sen_len"] == 40 and err.value.skeleton["tab_field_list"].startswith("<required")
    assert not (tmp_path / "x.ckpt").exists()
    with pytest.raises(UsageError, match="2 names but the tabular weights take 3"):
        api.migrate(ROOT / "fixtures" / "bimodal_cnn_v1.ckpt", tmp_path / "x.ckpt",
                    overrides={"tab_field_list": ["a", "b"]})


def test_overrides_contradicting_shapes_are_refused(tmp_path):
    with pytest.raises(UsageError, match="contradicts the tensor shapes"):
        api.migrate(ROOT / "fixtures" / "text_cnn_v1.ckpt", tmp_path / "x.ckpt", overrides={"kernel_size": [3, 7]})


def test_edited_state_dicts_are_refused_naming_keys(tmp_path):
    sd = torch.load(ROOT / "fixtures" / "bimodal_cnn_v1_state_dict.pt", weights_only=True)
    e = next(x for x in MANIFEST if x["file"] == "bimodal_cnn_v1_state_dict.pt")
    cases = {
        "missing": ({k: v for k, v in sd.items() if k != "final_merge_network.1.bias"}, "missing keys: final_merge"),
        "extra": ({**sd, "text_subnetwork.extra.weight": torch.zeros(2)}, "unexpected keys: text_subnetwork.extra"),
        "shape": ({**sd, "final_merge_network.1.bias": torch.zeros(3)}, "wrong shapes: final_merge_network.1.bias"),
        "dtype": ({**sd, "final_merge_network.1.bias": torch.zeros(2, dtype=torch.int64)}, "non-floating"),
    }
    for name, (bad, message) in cases.items():
        path = tmp_path / f"{name}.pt"
        torch.save(bad, path)
        with pytest.raises((MalformedSourceError, UnknownLayoutError), match=message):
            api.migrate(path, tmp_path / f"{name}.out.ckpt", overrides=e["overrides"])
        assert not (tmp_path / f"{name}.out.ckpt").exists()


def test_batchnorm_tabae_design_note_layout_is_refused(tmp_path):
    sd = torch.load(ROOT / "fixtures" / "tab_ae_v1.ckpt", weights_only=True)["state_dict"]
    sd["embedding_layer.0.running_mean"] = torch.zeros(3)
    torch.save(sd, tmp_path / "bn.pt")
    with pytest.raises(UnknownLayoutError, match="BatchNorm1d.*not a released layout"):
        api.migrate(tmp_path / "bn.pt", tmp_path / "out.ckpt")


def test_input_is_never_overwritten(tmp_path):
    src = tmp_path / "in.ckpt"
    src.write_bytes((ROOT / "fixtures" / "text_cnn_v1.ckpt").read_bytes())
    before = src.read_bytes()
    with pytest.raises(UsageError, match="is the input"):
        api.migrate(src, src)
    (tmp_path / "exists.ckpt").write_bytes(b"keep me")
    with pytest.raises(UsageError, match="exists; pass --force"):
        api.migrate(src, tmp_path / "exists.ckpt")
    assert (tmp_path / "exists.ckpt").read_bytes() == b"keep me" and src.read_bytes() == before
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".partial")]


def test_audit_lists_every_key_with_rule_and_digest():
    e = next(x for x in MANIFEST if x["file"] == "bimodal_cnn_v1.ckpt")
    report = api.audit(ROOT / "fixtures" / e["file"], overrides=e["overrides"])
    sources = {r.source for r in report.rows}
    assert sources == set(_legacy_sd(e))
    dropped = {r.source: r for r in report.rows if r.target is None}
    assert set(dropped) == {"text_subnetwork.class_weights_tensor", "text_subnetwork.loss_op.weight"}
    assert all("nested" in r.reason for r in dropped.values())
    assert all(r.unchanged for r in report.rows if r.target)
    emb = next(r for r in report.rows if r.source == "text_subnetwork.embeddings.weight")
    assert emb.target == "text_encoder.embeddings.weight" and emb.rule.endswith("#text-embeddings-and-convs")
    assert "| `text_subnetwork.network.1.weight` |" in report.to_markdown()
    assert json.loads(report.to_json())["rule_files"][0]["file"] == "BimodalCNN/v1-v2.toml"
    assert any("tab_field_list" in h for h in report.hparam_edits)


def test_inspect_reports_family_version_and_evidence():
    info = api.inspect(ROOT / "fixtures" / "multimodal_cnn_v0.ckpt")
    assert (info["family"], info["layout"], info["format"]) == ("BimodalCNN", "v0", "lightning")
    assert any("word_embeddings" in ev for ev in info["evidence"])
    assert info["optimizer_states"] == 1 and info["epoch"] is not None


def test_detected_version_of_each_fixture():
    for e in MANIFEST:
        raw = read_checkpoint(ROOT / "fixtures" / e["file"])
        from athelas_migrate.families import detect

        det = detect(raw)
        assert (det.family, det.version) == (e["family"], e["version"]), e["file"]
