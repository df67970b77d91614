"""Rule inference on small old/new pairs (tests/infer_pairs.py): every case the issue lists, and refusals.

Every call passes four inputs: two probe, the other two prove (`probe_inputs`/`proof_inputs` are asserted),
so no proof ever runs on an input the inference looked at. Outputs are compared at atol 1e-5 by the proof.
"""

from __future__ import annotations

import copy
import tomllib

import pytest
import torch

from athelas_migrate import RuleInferenceError, apply_rules, infer_rules
from athelas_migrate.errors import AthelasError, RuleError
from athelas_migrate.infer import infer
from athelas_migrate.rules.inverse import invert_file
from athelas_migrate.rules.schema import parse_rule_bytes
from tests import infer_pairs as P


def _inputs(kind: str, n: int = 4, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    if kind == "vec":
        return [torch.randn(3, 8, generator=g) for _ in range(n)]
    if kind == "seq":
        return [torch.randn(2, 5, 8, generator=g) for _ in range(n)]
    if kind == "conv":
        return [torch.randn(2, 4, 7, generator=g) for _ in range(n)]
    if kind == "walk":
        return [torch.randn(2, 5, 16, generator=g) for _ in range(n)]
    return [torch.randint(0, 6, (2, 5), generator=g) for _ in range(n)]


def _run(old, new, kind, **kw):
    torch.manual_seed(0)
    result = infer(old, new, _inputs(kind), "Pair", "v1", "v2", **kw)
    assert result.proof.ok and result.probe_inputs == 2 and result.proof_inputs == 2
    rules = tomllib.loads(result.toml)["rules"]
    # the rules are a proof-carrying draft: apply, load strictly, same outputs on fresh inputs
    trial = copy.deepcopy(new).eval()
    trial.load_state_dict(apply_rules(result.toml, old.state_dict()), strict=True)
    with torch.no_grad():
        for x in _inputs(kind, 2, seed=99):
            torch.testing.assert_close(trial(x), old.eval()(x), rtol=0, atol=1e-5)
    return result, rules


def _by_id(rules):
    return {r["id"]: r for r in rules}


def test_public_names_and_error_base():
    assert issubclass(RuleInferenceError, AthelasError)
    old, new = P.OldNested(), P.NewNested()
    text = infer_rules(old, new, _inputs("vec"), family="MyModel", from_version="v2", to_version="v3")
    data = tomllib.loads(text)
    assert (data["family"], data["from"], data["to"]) == ("MyModel", "v2", "v3")


def test_changed_nesting_collapses_to_one_rule_per_moved_subtree():
    _, rules = _run(P.OldNested(), P.NewNested(), "vec")
    assert {r["id"]: (r["match"], r["to"]) for r in rules} == {
        "encoder.body.0-to-backbone.mlp.fc_in": (r"^encoder\.body\.0\.(.*)$", r"backbone.mlp.fc_in.\1"),
        "encoder.body.2-to-backbone.mlp.fc_out": (r"^encoder\.body\.2\.(.*)$", r"backbone.mlp.fc_out.\1"),
        "heads.0-to-heads.label": (r"^heads\.0\.(.*)$", r"heads.label.\1"),
        "heads.1-to-heads.aux": (r"^heads\.1\.(.*)$", r"heads.aux.\1"),
    }


def test_a_renamed_stack_collapses_over_layer_indices():
    _, rules = _run(P.OldStack(), P.NewStack(), "vec")
    assert {r["id"]: (r["match"], r["to"]) for r in rules} == {
        "layers.N.attn-to-blocks.N.mixer": (r"^layers\.(\d+)\.attn\.(.*)$", r"blocks.\1.mixer.\2"),
        "layers.N.mlp-to-blocks.N.ffn": (r"^layers\.(\d+)\.mlp\.(.*)$", r"blocks.\1.ffn.\2"),
    }
    # collapsed rules stay invertible: the engine rolls the new keys back to the old ones
    text = infer_rules(P.OldStack(), P.NewStack(), _inputs("vec"))
    rf = invert_file(parse_rule_bytes(text.encode(), "inferred"))
    from collections import OrderedDict

    from athelas_migrate.io.tensor_ref import TensorRef
    from athelas_migrate.rules.apply import apply_state_rules

    new_state = OrderedDict((k, TensorRef.from_torch(v)) for k, v in P.NewStack().state_dict().items())
    assert set(apply_state_rules(rf, new_state).state) == set(P.OldStack().state_dict())


@pytest.mark.parametrize("swap_calls", [False, True], ids=["forward-order", "order-misleads"])
def test_same_shaped_branches_assigned_by_role(swap_calls):
    result, rules = _run(P.OldBranches(), P.NewBranches(swap_calls), "conv")
    moves = {r["match"]: r["to"] for r in rules}
    assert moves[r"^convs\.0\.(.*)$"] == r"relu_branch.\1"
    assert moves[r"^convs\.1\.(.*)$"] == r"tanh_branch.\1"
    evidence = " ".join(line for _, lines in result.evidence for line in lines)
    assert ("this permutation does" in evidence) == swap_calls


def test_qkv_roles_found_although_names_and_order_differ():
    result, rules = _run(P.OldQKV(), P.NewQKV(), "seq")
    moves = {r["match"]: r["to"] for r in rules}
    assert moves == {r"^query\.(.*)$": r"q_proj.\1", r"^key\.(.*)$": r"k_proj.\1",
                     r"^value\.(.*)$": r"v_proj.\1", r"^out\.(.*)$": r"o_proj.\1"}


def test_fused_in_proj_is_split_and_separate_projections_are_concatenated():
    _, rules = _run(P.FusedAttention(), P.SplitAttention(), "seq")
    splits = {r["match"]: (r["to"], r["sizes"]) for r in rules if r["op"] == "split"}
    assert splits == {r"^attn\.in_proj_weight$": (["attn.q.weight", "attn.k.weight", "attn.v.weight"], [8, 8, 8]),
                      r"^attn\.in_proj_bias$": (["attn.q.bias", "attn.k.bias", "attn.v.bias"], [8, 8, 8])}
    _, rules = _run(P.SplitAttention(), P.FusedAttention(), "seq")
    concats = {r["to"]: r["match"] for r in rules if r["op"] == "concat"}
    assert concats == {"attn.in_proj_weight": [r"^attn\.q\.weight$", r"^attn\.k\.weight$", r"^attn\.v\.weight$"],
                       "attn.in_proj_bias": [r"^attn\.q\.bias$", r"^attn\.k\.bias$", r"^attn\.v\.bias$"]}


def test_layouts_and_renamed_parameters():
    """gamma/beta -> weight/bias, x @ W -> nn.Linear (square W: only activations decide), flat -> shaped."""
    _, rules = _run(P.OldLayout(), P.NewLayout(), "vec")
    ops = {r["match"]: (r["op"], r["to"], r.get("dims"), r.get("shape")) for r in rules}
    assert ops == {
        r"^norm\.gamma$": ("rename", "ln.weight", None, None),
        r"^norm\.beta$": ("rename", "ln.bias", None, None),
        r"^dense\.W$": ("transpose", "proj.weight", [0, 1], None),
        r"^dense\.b$": ("rename", "proj.bias", None, None),
        r"^scale\.scale$": ("reshape", "rescale.scale", None, [8, 3]),
    }


def test_unread_keys_dropped_with_proven_reason_and_restore():
    old = P.OldWithExtras()
    _, rules = _run(old, P.NewWithoutExtras(), "ids")
    drops = {r["match"]: r for r in rules if r["op"] == "drop"}
    assert set(drops) == {r"^loss_weights$", r"^positions$", r"^stale_stats$"}
    assert all("leaves every output unchanged" in d["reason"] for d in drops.values())
    assert drops[r"^loss_weights$"]["restore"] == {"anchor": r"^class_weights$", "key": "loss_weights",
                                                   "value": "copy"}
    assert drops[r"^positions$"]["restore"]["value"] == "arange"
    assert "restore" not in drops[r"^stale_stats$"]
    # the restores rebuild the dropped values on rollback, bitwise (stale_stats has nothing to rebuild from)
    text = "\n".join(line for line in infer_rules(old, P.NewWithoutExtras(), _inputs("ids")).splitlines())
    rf = parse_rule_bytes(text.encode(), "inferred")
    rf.rules = [r for r in rf.rules if r.id != "drop-stale_stats"]
    state = {k: v for k, v in old.state_dict().items() if k != "stale_stats"}
    from collections import OrderedDict

    from athelas_migrate.io.tensor_ref import TensorRef
    from athelas_migrate.rules.apply import apply_state_rules

    forward = apply_state_rules(rf, OrderedDict((k, TensorRef.from_torch(v)) for k, v in state.items())).state
    back = apply_state_rules(invert_file(rf), forward).state
    assert set(back) == set(state)
    for k in state:
        assert torch.equal(back[k].to_torch(), state[k])


def test_refuses_a_key_the_forward_reads_but_the_new_model_has_no_place_for():
    with pytest.raises(RuleInferenceError) as err:
        infer_rules(P.OldUsesBias(), P.NewWithoutExtras(), _inputs("ids"))
    assert err.value.unplaced == ["stale_stats"] and err.value.unfilled == []
    assert "stale_stats" in str(err.value) and err.value.exit_code == 1


def test_refuses_targets_it_cannot_fill_with_candidates():
    with pytest.raises(RuleInferenceError) as err:
        infer_rules(P.ReluHead(), P.WiderHead(), _inputs("vec"))
    assert err.value.unfilled == ["extra.weight", "extra.bias"]
    assert set(err.value.candidates) >= {"extra.weight", "extra.bias"}


def test_refuses_when_the_new_model_computes_something_else_and_names_where():
    with pytest.raises(RuleInferenceError) as err:
        infer_rules(P.ReluHead(), P.GeluHead(), _inputs("vec"))
    msg = str(err.value)
    assert "computes something else" in msg and "first divergent module: out" in msg
    assert err.value.divergence["module"] == "out" and err.value.divergence["old_module"] == "net.2"
    assert "\n" not in msg


def test_apply_rules_refuses_unmatched_and_doubly_matched_keys(tmp_path):
    text = infer_rules(P.OldNested(), P.NewNested(), _inputs("vec"))
    sd = P.OldNested().state_dict()
    with pytest.raises(RuleError, match="matched by no rule"):
        apply_rules(text, {**sd, "stray.weight": torch.zeros(1)})
    doubled = text + "\n[[rules]]\nid = 'again'\nop = 'rename'\nmatch = '^heads\\.0\\.weight$'\nto = 'x'\n"
    with pytest.raises(RuleError, match="more than one rule"):
        apply_rules(doubled, sd)
    path = tmp_path / "v2-v3.toml"
    path.write_text(text)
    assert set(apply_rules(path, sd)) == set(P.NewNested().state_dict())


def test_empty_inputs_is_a_usage_error():
    from athelas_migrate.errors import UsageError

    with pytest.raises(UsageError):
        infer_rules(P.OldNested(), P.NewNested(), [])


def test_models_left_in_their_mode_and_new_weights_ignored():
    old, new = P.OldNested().train(), P.NewNested()
    old.heads.eval()  # mixed modes survive too
    before = {k: v.clone() for k, v in new.state_dict().items()}
    infer_rules(old, new, _inputs("vec"))
    assert old.training and old.encoder.body[0].training and not old.heads[0].training
    assert all(torch.equal(before[k], v) for k, v in new.state_dict().items())


def test_walkthrough_pytorch_transformer_encoder_layer_to_hand_written_block():
    """docs/rules.md: nn.TransformerEncoderLayer (fused in_proj, linear1/2, norm1/2) -> P.Block."""
    torch.manual_seed(0)
    old, new = P.torch_layer(), P.Block()
    _, rules = _run(old, new, "walk")
    ops = {r["id"]: (r["op"], r["to"]) for r in rules}
    assert ops == {
        "split-self_attn.in_proj_weight": ("split", ["q_proj.weight", "k_proj.weight", "v_proj.weight"]),
        "split-self_attn.in_proj_bias": ("split", ["q_proj.bias", "k_proj.bias", "v_proj.bias"]),
        "self_attn.out_proj-to-o_proj": ("rename", r"o_proj.\1"),
        "linear1-to-ffn.0": ("rename", r"ffn.0.\1"),
        "linear2-to-ffn.2": ("rename", r"ffn.2.\1"),
        "rename-norm1.weight-to-gamma": ("rename", "norm_attn.gamma"),
        "rename-norm1.bias-to-beta": ("rename", "norm_attn.beta"),
        "rename-norm2.weight-to-gamma": ("rename", "norm_ffn.gamma"),
        "rename-norm2.bias-to-beta": ("rename", "norm_ffn.beta"),
    }


def test_the_proof_runs_on_held_out_inputs_and_catches_what_the_probes_missed():
    positive = [x.abs() for x in _inputs("vec")]
    mixed = _inputs("vec", seed=5)
    result = infer(P.AbsInput(), P.ReluInput(), positive, proof_inputs=positive[:1])
    assert result.proof.ok  # on non-negative inputs the two agree
    with pytest.raises(RuleInferenceError, match="computes something else"):
        infer(P.AbsInput(), P.ReluInput(), positive, proof_inputs=mixed)
    with pytest.raises(RuleInferenceError, match="computes something else"):
        infer(P.AbsInput(), P.ReluInput(), positive[:1] + mixed[:1])  # default split: input 1 proves
    with pytest.raises(RuleInferenceError, match="computes something else"):
        infer(P.AbsInput(), P.ReluInput(), mixed[:1] + positive[:1])  # and the probe inputs must agree too


def test_a_model_that_cannot_run_on_the_inputs_is_an_input_error():
    from athelas_migrate.errors import InputError

    with pytest.raises(InputError, match="old model .*cannot run on the example inputs"):
        infer_rules(P.OldNested(), P.NewNested(), [torch.randn(3, 5), torch.randn(3, 5)])


def test_local_tests_use_the_arguments_a_module_received_even_if_it_modifies_them_in_place():
    result, rules = _run(P.OldInPlace(), P.NewInPlace(), "vec")
    assert {r["match"]: r["to"] for r in rules} == {r"^pre\.(.*)$": r"inp.\1", r"^scale\.(.*)$": r"gain.\1"}
    evidence = " ".join(line for _, lines in result.evidence for line in lines)
    assert "inp <- pre" in evidence and "gain <- scale: same keys and shapes; fed" in evidence


def test_dtype_change_becomes_a_cast():
    _, rules = _run(P.Float64Offset(), P.Float32Offset(), "vec")
    assert [(r["op"], r["match"], r["to"], r["dtype"], r["from_dtype"]) for r in rules] == [
        ("cast", r"^offset$", "shift", "float32", "float64")]
