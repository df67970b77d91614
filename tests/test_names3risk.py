"""Names3Risk (LSTM2Risk, Transformer2Risk): rule ops, layouts, migrate, verify, rollback, train, export, refusals."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from athelas_migrate import api
from athelas_migrate.errors import MissingInformationError, NotInvertibleError, RuleError, ValidationError
from athelas_migrate.io.tensor_ref import TensorRef
from athelas_migrate.rules.apply import apply_state_rules
from athelas_migrate.rules.inverse import invert_file
from athelas_migrate.rules.schema import parse_rule_file

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
MANIFEST = json.loads((FIXTURES / "names3risk_manifest.json").read_text())
BY_FILE = {e["file"]: e for e in MANIFEST}
LSTM, LSTM1 = "names3risk_lstm_v1.pt", "names3risk_lstm_1layer_v1.pt"
TRANS, TRANS1 = "names3risk_transformer_v1.pt", "names3risk_transformer_1head_v1.pt"


# --------------------------------------------------------------------------- rule ops
def _rules(tmp_path: Path, body: str):
    path = tmp_path / "F" / "v1-v2.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('family = "F"\nfrom = "v1"\nto = "v2"\n' + textwrap.dedent(body))
    return parse_rule_file(path, "F/v1-v2.toml")


def _state(**tensors: torch.Tensor) -> OrderedDict:
    return OrderedDict((k.replace("__", "."), TensorRef.from_torch(v)) for k, v in tensors.items())


HEAD_RULES = """
[[rules]]
id = "head"
op = "widen_head"
match = '^net\\.(weight|bias)$'
to = 'clf.\\1'

[[rules]]
id = "weights"
op = "create"
to = "class_weights"
fill = 1.0
shape = ["num_classes"]
reason = "the target's loss weights"
"""


def test_widen_head_and_create_forward_then_inverse_round_trips_bitwise(tmp_path):
    rf = _rules(tmp_path, HEAD_RULES)
    w, b = torch.randn(1, 5), torch.randn(1)
    res = apply_state_rules(rf, _state(net__weight=w, net__bias=b), {"num_classes": 2})
    out = {k: v.to_torch() for k, v in res.state.items()}
    assert torch.equal(out["clf.weight"], torch.cat([torch.zeros(1, 5), w]))
    assert torch.equal(out["clf.bias"], torch.tensor([0.0, b.item()]))
    assert torch.equal(out["class_weights"], torch.ones(2))
    assert [e.op for e in res.events] == ["widen_head", "widen_head", "create"]
    back = apply_state_rules(invert_file(rf), res.state, {"num_classes": 2})
    assert list(back.state) == ["net.weight", "net.bias"] and not back.warnings
    assert torch.equal(back.state["net.weight"].to_torch(), w) and torch.equal(back.state["net.bias"].to_torch(), b)


def test_rollback_after_fine_tuning_keeps_the_function_and_says_so(tmp_path):
    rf = _rules(tmp_path, HEAD_RULES)
    w = torch.randn(2, 5)  # row 0 no longer zero: trained after the migration
    state = _state(clf__weight=w, clf__bias=torch.tensor([0.3, -0.2]), class_weights=torch.tensor([1.0, 3.0]))
    back = apply_state_rules(invert_file(rf), state, {"num_classes": 2})
    assert torch.equal(back.state["net.weight"].to_torch(), w[1:] - w[:1])
    text = " ".join(back.warnings)
    assert "row 0 of clf.weight is not zero" in text and "class_weights no longer holds the constant 1.0" in text
    x = torch.randn(4, 5)
    two = torch.softmax(x @ w.T + torch.tensor([0.3, -0.2]), 1)[:, 1]
    one = torch.sigmoid(x @ back.state["net.weight"].to_torch().T + back.state["net.bias"].to_torch())[:, 0]
    torch.testing.assert_close(one, two, atol=1e-6, rtol=0)


def test_head_ops_refuse_other_shapes_and_narrowing_has_no_inverse(tmp_path):
    rf = _rules(tmp_path, HEAD_RULES)
    with pytest.raises(RuleError, match=r"widen_head needs a one-row head, net.weight is \[2, 5\]"):
        apply_state_rules(rf, _state(net__weight=torch.randn(2, 5), net__bias=torch.randn(1)), {"num_classes": 2})
    with pytest.raises(RuleError, match="narrow_head needs a two-row head"):
        apply_state_rules(invert_file(rf), _state(clf__weight=torch.randn(3, 5), clf__bias=torch.randn(2),
                                                  class_weights=torch.ones(2)), {"num_classes": 2})
    narrow = _rules(tmp_path, "[[rules]]\nid = 'n'\nop = 'narrow_head'\nmatch = '^a$'\nto = 'b'\n")
    with pytest.raises(NotInvertibleError, match="narrow_head keeps only the row difference"):
        invert_file(narrow)


def test_create_refuses_an_existing_key_and_a_size_the_config_lacks(tmp_path):
    rf = _rules(tmp_path, HEAD_RULES + "\n[[rules]]\nid = 'keep'\nop = 'rename'\nmatch = '^(class_weights)$'\n"
                "to = '\\1'\n")
    with pytest.raises(RuleError, match="created key class_weights already exists"):
        apply_state_rules(rf, _state(net__weight=torch.randn(1, 2), net__bias=torch.randn(1),
                                     class_weights=torch.ones(2)), {"num_classes": 2})
    with pytest.raises(RuleError, match="shape entry 'num_classes' needs an integer config value"):
        apply_state_rules(_rules(tmp_path, HEAD_RULES), _state(net__weight=torch.randn(1, 2),
                                                               net__bias=torch.randn(1)), {})


@pytest.mark.parametrize("body, message", [
    ("op = 'create'\nto = 'k'\nshape = [2]\nreason = 'r'\n", "'fill' must be a number"),
    ("op = 'create'\nto = 'k'\nfill = 1.0\nshape = 2\nreason = 'r'\n", "'shape' must be a list"),
    ("op = 'create'\nto = 'k'\nfill = 1.0\nshape = [2]\n", "missing field 'reason'"),
    ("op = 'drop'\nmatch = '^a$'\nreason = 'r'\nrestore = { key = 'a', value = 'fill', shape = [2] }\n",
     "restore with value = \"fill\" needs"),
])
def test_malformed_new_op_rules_are_refused(tmp_path, body, message):
    with pytest.raises(RuleError, match=message):
        _rules(tmp_path, "[[rules]]\nid = 'x'\n" + body)


def test_fill_restore_rebuilds_a_dropped_dead_weight_and_warns_when_it_held_values(tmp_path):
    rf = _rules(tmp_path, """
[[rules]]
id = "dead"
op = "drop"
match = '^dead$'
reason = "never used"
restore = { key = 'dead', value = "fill", fill = 0.0, shape = ["h", 3] }

[[rules]]
id = "keep"
op = "rename"
match = '^(w)$'
to = '\\1'
""")
    res = apply_state_rules(rf, _state(w=torch.ones(1), dead=torch.randn(4, 3)), {"h": 4})
    assert list(res.state) == ["w"] and "rollback writes 0.0 everywhere" in res.warnings[0]
    back = apply_state_rules(invert_file(rf), res.state, {"h": 4})
    assert torch.equal(back.state["dead"].to_torch(), torch.zeros(4, 3))
    quiet = apply_state_rules(rf, _state(w=torch.ones(1), dead=torch.zeros(4, 3)), {"h": 4})
    assert not quiet.warnings


# --------------------------------------------------------------------------- layouts
CFG = dict(n_embed=50, embedding_size=8, hidden_size=6, input_tab_dim=5, n_heads=2, max_sen_len=12,
           tab_field_list=list("abcde"), text_name="t")


@pytest.mark.parametrize("layers", [1, 3])
def test_lstm_layouts_match_the_spec_key_for_key(layers):
    from athelas_migrate.models.names3risk import LSTM2Risk
    from legacy.names3risk import LSTM2Risk as Legacy

    old = list(Legacy({**CFG, "n_lstm_layers": layers}).state_dict())
    new = list(LSTM2Risk({**CFG, "n_lstm_layers": layers}).state_dict())
    assert len(old) == 38 + 8 * layers and len(new) == 40 + 8 * layers
    assert old[:5] == ["text_projection.token_embedding_table.weight", "text_projection.lstm.weight_ih_l0",
                       "text_projection.lstm.weight_hh_l0", "text_projection.lstm.bias_ih_l0",
                       "text_projection.lstm.bias_hh_l0"]
    assert old[-4:] == ["net.9.weight", "net.9.bias", "net.12.weight", "net.12.bias"]
    assert new[0] == "class_weights_tensor" and new[-1] == "loss_fn.weight"
    assert new[-3:-1] == ["classifier.12.weight", "classifier.12.bias"]
    assert "classifier.6.ffn.2.weight" in new and "tab_encoder.0.num_batches_tracked" in new


@pytest.mark.parametrize("blocks, heads", [(1, 1), (2, 4)])
def test_transformer_layouts_match_the_spec_key_for_key(blocks, heads):
    from athelas_migrate.models.names3risk import Transformer2Risk
    from legacy.names3risk import Transformer2Risk as Legacy

    cfg = {**CFG, "n_blocks": blocks, "n_heads": heads}
    old, new = list(Legacy(cfg).state_dict()), list(Transformer2Risk(cfg).state_dict())
    assert len(old) == len(new) == 37 + blocks * (heads + 10)
    assert old[2:4] == ["text_projection.blocks.0.sa.heads.0.qkv.weight",
                        "text_projection.blocks.0.sa.heads.1.qkv.weight"][: min(2, heads)] + \
        (["text_projection.blocks.0.sa.proj.weight"] if heads == 1 else [])
    assert new[3:5] == ["text_encoder.blocks.0.ln1.weight", "text_encoder.blocks.0.ln1.bias"]
    assert "text_projection.tab_layer.weight" in old and "net.12.weight" in old and "net.9.net.2.bias" in old
    assert "classifier.9.ffn.2.bias" in new and "text_encoder.proj.weight" in new


# --------------------------------------------------------------------------- pipeline
@pytest.fixture(scope="module")
def migrated(tmp_path_factory):
    out = tmp_path_factory.mktemp("names3risk")
    paths = {}
    for e in MANIFEST:
        dst = out / (Path(e["file"]).stem + ".v2.ckpt")
        api.migrate(FIXTURES / e["file"], dst, overrides=e["overrides"])
        paths[e["file"]] = dst
    return paths


def test_v1_without_names_is_refused_naming_both_and_nothing_is_written(tmp_path):
    dst = tmp_path / "out.ckpt"
    with pytest.raises(MissingInformationError, match=r"text name nor the tabular field names .*only their count, "
                       r"5.*Python set.*missing: text_name, tab_field_list"):
        api.migrate(FIXTURES / LSTM, dst)
    with pytest.raises(MissingInformationError, match="missing: text_name"):
        api.migrate(FIXTURES / TRANS, dst, overrides={"tab_field_list": list("abcde")})
    assert not dst.exists()
    from athelas_migrate.errors import UsageError

    with pytest.raises(UsageError, match="tab_field_list has 3 names but the tabular weights take 5"):
        api.migrate(FIXTURES / LSTM, dst, overrides={"text_name": "n", "tab_field_list": list("abc")})
    with pytest.raises(UsageError, match="unweighted BCE"):
        api.migrate(FIXTURES / LSTM, dst, overrides={**BY_FILE[LSTM]["overrides"], "class_weights": [1.0, 3.0]})
    assert not dst.exists()


@pytest.mark.parametrize("file, family", [(LSTM, "LSTM2Risk"), (LSTM1, "LSTM2Risk"), (TRANS, "Transformer2Risk"),
                                          (TRANS1, "Transformer2Risk")])
def test_detection_is_exact_and_sizes_come_from_shapes(file, family, migrated):
    from athelas_migrate.families import detect, get_family
    from athelas_migrate.io.reader import read_checkpoint

    raw = read_checkpoint(str(FIXTURES / file))
    det = detect(raw)
    assert (det.family, det.version) == (family, "v1")
    cfg = get_family(family).configure(raw, "v1", BY_FILE[file]["overrides"])
    legacy = BY_FILE[file]["legacy_config"]
    for key in ("n_embed", "embedding_size", "hidden_size", "n_lstm_layers", "n_blocks", "n_heads"):
        if key in legacy:
            assert cfg[key] == legacy[key], key
    assert cfg["input_tab_dim"] == legacy["n_tab_features"]
    assert detect(read_checkpoint(str(migrated[file]))).version == "v2"


def test_detection_does_not_claim_a_file_with_one_key_too_many(tmp_path):
    from athelas_migrate.errors import UnknownLayoutError
    from athelas_migrate.families import detect
    from athelas_migrate.io.reader import read_checkpoint

    sd = torch.load(FIXTURES / LSTM)
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "x.pt")
    with pytest.raises(UnknownLayoutError):
        detect(read_checkpoint(str(tmp_path / "x.pt")))


def test_migrated_checkpoint_loads_without_arguments_and_matches_the_legacy_probability(migrated):
    from athelas_migrate.models.names3risk import LSTM2Risk, Transformer2Risk
    from legacy import names3risk as legacy

    for file, cls in ((LSTM, LSTM2Risk), (TRANS1, Transformer2Risk)):
        ckpt = torch.load(migrated[file], weights_only=False)
        assert ckpt["hparams_name"] == "config" and ckpt["hyper_parameters"]["tab_field_list"] == \
            BY_FILE[file]["overrides"]["tab_field_list"]
        model = cls.load_from_checkpoint(str(migrated[file])).eval()
        old = getattr(legacy, cls.__name__)(BY_FILE[file]["legacy_config"])
        old.load_state_dict(torch.load(FIXTURES / file))
        io = torch.load(FIXTURES / BY_FILE[file]["io"])
        from athelas_migrate.families.names3risk.verify import _Names3RiskAdapter

        with torch.no_grad():
            p_old = old.eval()(io["inputs"])
            batch = {"names_input_ids": io["inputs"]["text"],
                     **{f: io["inputs"]["tabular"][:, j] for j, f in enumerate(model.tab_field_list)}}
            for key in ("text_length", "attn_mask"):
                if key in io["inputs"]:
                    batch["text_length" if key == "text_length" else "names_attention_mask"] = io["inputs"][key]
            p_new = torch.softmax(model(batch), 1)[:, 1:2]
        # computed now vs when the fixture was made: other CPUs use other kernels (the gate tolerance)
        torch.testing.assert_close(p_old, io["outputs"], rtol=0, atol=1e-5)
        assert (p_new - p_old).abs().max() <= 1e-6
        assert _Names3RiskAdapter  # the adapter module imports without side effects


@pytest.mark.parametrize("file", [LSTM1, TRANS1])
def test_verify_passes_with_domain_traps_and_training(file, migrated):
    from athelas_migrate.equivalence.runner import run_verify

    report = run_verify(FIXTURES / file, migrated[file], overrides=BY_FILE[file]["overrides"],
                        reference=FIXTURES / BY_FILE[file]["io"])
    assert report.passed, [(s.name, c.name, c.detail) for s, c in report.failed_checks() + report.errored_checks()]
    out = report.outputs["output"]
    assert out.max_abs <= 1e-6  # the 2-row GEMM residue (may be 0 on some CPUs and sizes)
    domain = {c.name: c for c in report.section("domain").checks}
    assert domain["2-logit head residue"].status == "pass" and "bitwise equal" in domain["2-logit head residue"].detail
    if file == TRANS1:
        assert domain["T = 17 (beyond the position table)"].status == "expected"
        assert domain["a row whose mask is all False"].status == "expected"
    else:
        assert domain["unsorted lengths"].status == "expected"
    names = {c.name for c in report.section("outputs").checks}
    assert "output [single-deployed]" in names


def test_verify_fails_on_a_sabotaged_head(tmp_path, migrated):
    from athelas_migrate.equivalence.runner import run_verify

    ckpt = torch.load(migrated[LSTM1], weights_only=False)
    ckpt["state_dict"]["classifier.12.weight"][0] += 0.05  # row 0 no longer zero
    torch.save(ckpt, tmp_path / "bad.ckpt")
    report = run_verify(FIXTURES / LSTM1, tmp_path / "bad.ckpt", overrides=BY_FILE[LSTM1]["overrides"],
                        training=False)
    assert not report.passed and report.outputs["output"].max_abs > 1e-4


@pytest.mark.parametrize("file", [LSTM, TRANS])
def test_rollback_gives_a_bare_state_dict_the_legacy_class_loads(file, migrated, tmp_path):
    from legacy import names3risk as legacy

    back = tmp_path / "back.pt"
    res = api.migrate(migrated[file], back, to="v1")
    sd, orig = torch.load(back), torch.load(FIXTURES / file)
    assert isinstance(sd, OrderedDict) and list(sd) == list(orig)
    differ = [k for k in orig if not torch.equal(orig[k], sd[k])]
    if file == LSTM:
        assert differ == [] and not res.warnings
    else:  # the dead tab_layer cannot come back: zeros, and the forward never reads it
        assert differ == ["text_projection.tab_layer.weight", "text_projection.tab_layer.bias"]
    family = BY_FILE[file]["family"]
    model = getattr(legacy, family)(BY_FILE[file]["legacy_config"])
    model.load_state_dict(sd, strict=True)
    io = torch.load(FIXTURES / BY_FILE[file]["io"])
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(io["inputs"]), io["outputs"], rtol=0, atol=1e-5)  # other CPUs


def test_train_predict_and_export_the_migrated_model(migrated, tmp_path):
    import lightning.pytorch as pl

    from athelas_migrate.export import export_onnx
    from athelas_migrate.models.names3risk import LSTM2Risk, Transformer2Risk

    for file, cls in ((LSTM1, LSTM2Risk), (TRANS1, Transformer2Risk)):
        model = cls.load_from_checkpoint(str(migrated[file]))
        g = torch.Generator().manual_seed(0)
        n = 16
        data = {model.ids_key: torch.randint(2, 60, (n, 10), generator=g),
                **{f: torch.randn(n, generator=g) for f in model.tab_field_list},
                "label": torch.randint(0, 2, (n,), generator=g)}
        rows = [{k: v[i] for k, v in data.items()} for i in range(n)]
        loader = torch.utils.data.DataLoader(rows, batch_size=8)
        trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0)
        before = model.classifier[-1].weight.detach().clone()
        trainer.fit(model, loader)
        assert not torch.equal(before, model.classifier[-1].weight.detach())
        trainer.save_checkpoint(tmp_path / "trained.ckpt")
        reloaded = cls.load_from_checkpoint(str(tmp_path / "trained.ckpt")).eval()
        probs = reloaded.predict_step(next(iter(loader)), 0)
        assert probs.shape == (8, 2) and torch.allclose(probs.sum(1), torch.ones(8))
        res = export_onnx(str(tmp_path / "trained.ckpt"), str(tmp_path / f"{cls.__name__}.onnx"),
                          batch_sizes=(1, 4))
        assert res.ok and res.max_abs_diff <= 1e-5


def test_cli_refusal_is_one_line_exit_3(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "athelas_migrate", "ckpt", str(FIXTURES / TRANS1),
                           str(tmp_path / "o.ckpt")], capture_output=True, text=True)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    assert "text_name, tab_field_list" in proc.stderr and not (tmp_path / "o.ckpt").exists()


def test_validation_error_is_exit_1():
    assert ValidationError.exit_code == 1


def test_train_and_predict_cli_from_scratch(tmp_path):
    from click.testing import CliRunner

    from athelas_migrate.cli import main

    run = CliRunner()
    r = run.invoke(main, ["demo-data", str(tmp_path / "demo"), "--rows", "120", "--seed", "1"])
    assert r.exit_code == 0, r.output
    demo = tmp_path / "demo"
    r = run.invoke(main, ["train", str(demo / "train.csv"), "--val", str(demo / "val.csv"), "--model", "lstm2risk",
                          "--out", str(tmp_path / "m"), "--text-col", "review", "--label-col", "label",
                          "--num-cols", "spend_score,complaint_rate,tenure_years", "--max-epochs", "1",
                          "--no-progress", "--accelerator", "cpu", "--devices", "1", "--embed-size", "8",
                          "--set", "hidden_size=4", "--set", "n_lstm_layers=1"])
    assert r.exit_code == 0, r.output
    ckpt = torch.load(tmp_path / "m" / "best.ckpt", weights_only=False)
    assert ckpt["hparams_name"] == "config" and ckpt["hyper_parameters"]["embedding_size"] == 8
    r = run.invoke(main, ["predict", str(tmp_path / "m" / "best.ckpt"), str(demo / "test.csv"), "-o",
                          str(tmp_path / "p.csv")])
    assert r.exit_code == 0 and (tmp_path / "p.csv").read_text().count("\n") > 5, r.output
    r = run.invoke(main, ["train", str(demo / "train.csv"), "--model", "Transformer2Risk", "--out",
                          str(tmp_path / "t"), "--text-col", "review", "--label-col", "label"])
    assert r.exit_code == 2 and "needs numeric columns" in r.output


def test_audit_names_created_buffers_and_the_widened_head(tmp_path):
    report = api.audit(FIXTURES / TRANS1, overrides=BY_FILE[TRANS1]["overrides"])
    made = {x["target"]: x["anchor"] for x in report.restored}
    assert set(made) == {"class_weights_tensor", "loss_fn.weight"} and "a constant" in made["loss_fn.weight"]
    rows = {r.source: r for r in report.rows}
    assert rows["net.12.weight"].op == "widen_head" and rows["net.12.weight"].target == "classifier.12.weight"
    assert rows["text_projection.tab_layer.weight"].target is None and "dead weight" in \
        rows["text_projection.tab_layer.weight"].reason


def test_legacy_file_loads_through_the_v2_class_with_overrides():
    from athelas_migrate.models.names3risk import LSTM2Risk

    with pytest.warns(DeprecationWarning, match="migrated in memory"):
        model = LSTM2Risk.load_from_checkpoint(str(FIXTURES / LSTM), overrides=BY_FILE[LSTM]["overrides"])
    assert model.config["n_lstm_layers"] == 2 and model.tab_field_list == BY_FILE[LSTM]["overrides"]["tab_field_list"]
