"""TSA (temporal self-attention): recognised with evidence, every migration refused with exit 3, nothing written.

The files are built here from the key layout of shared/spec/next-families.md A.3 (zeros: detection and
refusal read keys and shapes only): single and dual sequence, Lightning checkpoint and bare state dict,
with and without the mixture of experts, and the older script generation.
"""

from __future__ import annotations

import subprocess
import sys
from collections import OrderedDict

import pytest
import torch

from athelas_migrate import api
from athelas_migrate.families.tsa import DIFFERENCES, NoExactMigrationError

NC, NN, NE, V, D, F, X = 34, 33, 5, 120, 16, 24, 3
E = D // 2


def _widths(n: int) -> list[int]:
    return [n, n // 2, n // 4, n // 8, n // 16, n // 32, 1]


def _layer(sd: dict, pre: str, w: int, moe: bool, ff: int = F) -> None:
    sd[f"{pre}multi_attn.in_proj_weight"] = torch.zeros(3 * w, w)
    sd[f"{pre}multi_attn.in_proj_bias"] = torch.zeros(3 * w)
    sd[f"{pre}multi_attn.out_proj.weight"] = torch.zeros(w, w)
    sd[f"{pre}multi_attn.out_proj.bias"] = torch.zeros(w)
    for ln in ("layer_norm1", "layer_norm2"):
        sd[f"{pre}{ln}.weight"], sd[f"{pre}{ln}.bias"] = torch.ones(w), torch.zeros(w)
    if moe:
        sd[f"{pre}feedforward.gate.w_gating"] = torch.zeros(w, X)
        sd[f"{pre}feedforward.experts.w1"] = torch.zeros(X, w, ff)
        sd[f"{pre}feedforward.experts.w2"] = torch.zeros(X, ff, w)
    else:
        sd[f"{pre}feedforward.0.weight"], sd[f"{pre}feedforward.0.bias"] = torch.zeros(ff, w), torch.zeros(ff)
        sd[f"{pre}feedforward.3.weight"], sd[f"{pre}feedforward.3.bias"] = torch.zeros(w, ff), torch.zeros(w)


def _order_block(sd: dict, pre: str, w: int, layers: int, moe: bool, rows: int = V + 2, ff: int = F) -> None:
    sd[f"{pre}dummy_order"] = torch.zeros(1, w)
    sd[f"{pre}emb_tbl_bias"] = torch.zeros(NC + NN, w // 2)
    sd[f"{pre}embedding.weight"] = torch.zeros(rows, w // 2)
    sd[f"{pre}layer_norm_feature.weight"], sd[f"{pre}layer_norm_feature.bias"] = torch.ones(w), torch.zeros(w)
    for i in range(layers):
        _layer(sd, f"{pre}layer_stack.{i}.", w, moe, ff)
    sd[f"{pre}layer_norm.weight"], sd[f"{pre}layer_norm.bias"] = torch.ones(w), torch.zeros(w)
    for kind, n in (("cat", NC), ("num", NN)):
        ws = _widths(n)
        for j in range(6):
            sd[f"{pre}feature_aggregation_{kind}.encoder.{2 * j}.weight"] = torch.zeros(ws[j + 1], ws[j])
            sd[f"{pre}feature_aggregation_{kind}.encoder.{2 * j}.bias"] = torch.zeros(ws[j + 1])


def _feature_block(sd: dict, pre: str, layers: int, moe: bool, scripts: bool) -> None:
    sd[f"{pre}emb_tbl_bias"] = torch.zeros(NC + NN, E)
    sd[f"{pre}{'engineered_emb_tbl_bias' if scripts else 'emb_tbl_bias_engineered'}"] = torch.zeros(NE, E)
    sd[f"{pre}embedding.weight"] = torch.zeros(V + 2, E)
    sd[f"{pre}embedding_engineered.weight"] = torch.zeros(NE + 1, E)
    for i in range(layers):
        _layer(sd, f"{pre}{'layer_stack_feature' if scripts else 'layer_stack'}.{i}.", E, moe)
    if scripts:
        sd[f"{pre}layer_norm_engineered.weight"], sd[f"{pre}layer_norm_engineered.bias"] = torch.ones(E), torch.zeros(E)
    sd[f"{pre}layer_norm.weight"], sd[f"{pre}layer_norm.bias"] = torch.ones(2 * E if scripts else E), \
        torch.zeros(2 * E if scripts else E)


def tsa_state(dual: bool, moe: bool, scripts: bool = False) -> OrderedDict:
    sd: dict = OrderedDict()
    if not scripts:
        sd["class_weights_tensor"] = torch.ones(2)
    sd["embedding.weight"] = torch.zeros(V + 2, E)
    sd["embedding_engineered.weight"] = torch.zeros(NE + 1, E)
    if dual:
        sd["embedding_gate.weight"] = torch.zeros(V + 2, 16)
        _order_block(sd, "order_attention_cid.", D, 2, moe)
        _order_block(sd, "order_attention_ccid.", D, 2, moe)
        for side in (("cid", "ccid") if not scripts else ("",)):
            _order_block(sd, f"gate_emb{'_' + side if side else ''}.", 32, 1, False, ff=128)
        sd["gate_score.0.weight"], sd["gate_score.0.bias"] = torch.zeros(256, 64), torch.zeros(256)
        sd["gate_score.3.weight"], sd["gate_score.3.bias"] = torch.zeros(2, 256), torch.zeros(2)
    else:
        _order_block(sd, "order_attention.", D, 2, moe)
    _feature_block(sd, "feature_attention.", 2, moe, scripts)
    if dual or scripts:
        w = 2 * E if scripts else D
        sd["layer_norm.weight"], sd["layer_norm.bias"] = torch.ones(w), torch.zeros(w)
    sd["clf.0.weight"], sd["clf.0.bias"] = torch.zeros(1024, D + E), torch.zeros(1024)
    sd["clf.3.weight"], sd["clf.3.bias"] = torch.zeros(2, 1024), torch.zeros(2)
    if not scripts:
        sd["loss_op.weight"] = torch.ones(2)
    return sd


def _save(path, sd: OrderedDict, lightning: bool) -> str:
    if lightning:
        torch.save({"epoch": 1, "global_step": 10, "pytorch-lightning_version": "2.6.6", "state_dict": sd,
                    "loops": {}, "callbacks": {}, "optimizer_states": [], "lr_schedulers": [], "hparams_name": None,
                    "hyper_parameters": {"lr": 2e-5, "is_binary": True, "class_weights": [1.0, 1.0]}}, path)
    else:
        torch.save(sd, path)
    return str(path)


CASES = [(False, True, True, "TSASingleSeq", "v1"), (False, False, False, "TSASingleSeq", "v1"),
         (True, True, True, "TSADualSeq", "v1"), (True, False, False, "TSADualSeq", "v1")]


@pytest.mark.parametrize("dual, moe, lightning, family, version", CASES)
def test_tsa_is_recognised_with_evidence_and_every_migration_refuses(tmp_path, dual, moe, lightning, family,
                                                                       version):
    src = _save(tmp_path / ("m.ckpt" if lightning else "m.pt"), tsa_state(dual, moe), lightning)
    info = api.inspect(src)
    assert (info["family"], info["layout"]) == (family, version)
    evidence = " ".join(info["evidence"])
    assert "dummy_order" in evidence and ("mixture of experts" in evidence) == moe
    dst = tmp_path / "out.ckpt"
    with pytest.raises(NoExactMigrationError, match="has no exact migration.*--explain") as err:
        api.migrate(src, dst)
    assert err.value.exit_code == 3 and err.value.explanation == list(DIFFERENCES)
    with pytest.raises(NoExactMigrationError):
        api.audit(src)
    assert not dst.exists() and sorted(p.name for p in tmp_path.iterdir()) == [("m.ckpt" if lightning else "m.pt")]


@pytest.mark.parametrize("dual, family", [(False, "TSASingleSeq"), (True, "TSADualSeq")])
def test_script_generation_is_recognised(tmp_path, dual, family):
    src = _save(tmp_path / "s.pt", tsa_state(dual, True, scripts=True), False)
    info = api.inspect(src)
    assert (info["family"], info["layout"]) == (family, "v0") and "script generation" in " ".join(info["evidence"])


def test_cli_refusal_is_one_line_and_explain_lists_the_differences(tmp_path):
    src = _save(tmp_path / "m.ckpt", tsa_state(False, True), True)
    run = [sys.executable, "-m", "athelas_migrate"]
    plain = subprocess.run(run + ["ckpt", src, str(tmp_path / "o.ckpt")], capture_output=True, text=True)
    assert plain.returncode == 3 and "Traceback" not in plain.stderr
    assert len(plain.stderr.strip().splitlines()) == 1 and "no exact migration" in plain.stderr
    explained = subprocess.run(run + ["audit", src, "--explain"], capture_output=True, text=True)
    assert explained.returncode == 3 and "exp((t_i - t_j) / 1e6)" in explained.stderr
    assert explained.stderr.count("\n  - ") == len(DIFFERENCES)
    batch = subprocess.run(run + ["batch", str(tmp_path), str(tmp_path / "out")], capture_output=True, text=True)
    assert batch.returncode == 3 and "no exact migration" in " ".join((batch.stdout + batch.stderr).split())
    assert not (tmp_path / "o.ckpt").exists() and not list((tmp_path / "out").rglob("*.ckpt"))
