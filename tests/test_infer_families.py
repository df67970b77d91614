"""Inference reproduces every hand-written rule file of this project, key for key, and proves it.

For each family and edge: the legacy model is rebuilt from the fixture's own config (as verify does),
the refactored model from its migration; `infer` drafts a rule file from the two models and the
generated verify batches (every other batch probes, the rest prove); then both rule files, the inferred
and the hand-written one, are applied by the engine to the same `old.state_dict()` and must send every
source key to the same target keys with the same op.

The v0 -> v1 edges: TextCNN and TabAE v0/v1 are one legacy class (a class-path move, hyper-parameters
only); BimodalCNN v0 is MultimodalCNN. Their state rule (`^(.*)$`, identity) is what is compared; the
`[[hparams]]` rules of a file are not inferred (hyper-parameters are not in a state dict). The
`position_ids` drop of the BERT files does not apply: today's BertModel does not save that buffer.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from athelas_migrate.api import build_v2_model
from athelas_migrate.equivalence.adapters import get_adapter
from athelas_migrate.families.base import load_class
from athelas_migrate.infer import infer
from athelas_migrate.io.reader import read_checkpoint
from athelas_migrate.io.tensor_ref import TensorRef
from athelas_migrate.pipeline import plan_and_apply
from athelas_migrate.rules.apply import apply_state_rules
from athelas_migrate.rules.inverse import invert_file
from athelas_migrate.rules.schema import parse_rule_bytes
from tests.conftest import FIXTURES, ROOT, manifest_entries

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

# (fixture, edge): one per family and edge of mappings/
CASES = [
    ("text_cnn_v1.ckpt", "v1-v2"),
    ("text_cnn_v1.ckpt", "v0-v1"),
    ("tab_ae_v1.ckpt", "v1-v2"),
    ("tab_ae_v1.ckpt", "v0-v1"),
    ("bimodal_cnn_v1.ckpt", "v1-v2"),
    ("multimodal_cnn_v0.ckpt", "v0-v1"),
    ("fusion_cross_attn_v1.ckpt", "v1-v2"),
    ("fusion_gate_v1.ckpt", "v1-v2"),
    ("fusion_moe_v1.ckpt", "v1-v2"),
    ("fusion_trimodal_v1.ckpt", "v1-v2"),
]


class _Feed:
    """Stands in for a model so that an adapter's `forward` returns the batch it would feed it."""

    def __init__(self, model):
        self.__dict__["model"] = model

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, x):
        return x


def _models(entry: dict, edge: str):
    """(family, old model, new model, inputs): the edge's two classes, built from the fixture's config."""
    path = str(FIXTURES / entry["file"])
    raw = read_checkpoint(path)
    result = plan_and_apply(path, overrides=entry["overrides"], raw=raw)
    fam, version = result.family, result.source_version
    config = fam.configure(raw, version, dict(entry["overrides"]))
    config.pop("_notes", None)
    config.setdefault("label_name", "label")
    ctx = SimpleNamespace(config_old=config, config_new=dict(result.config), family=fam, old_version=version,
                          generator=lambda salt=0: torch.Generator().manual_seed(1000 + salt))
    adapter = get_adapter(fam.name)
    state = {k: ref.to_torch() for k, ref in raw.state_dict.items()}
    old = adapter.build_old(ctx, dict(state))
    src, dst = edge.split("-")
    if dst == "v2":
        new = build_v2_model(result)
    else:  # a legacy -> legacy edge: the newer legacy class, from the same config
        ctx_new = SimpleNamespace(**{**vars(ctx), "old_version": dst})
        new = adapter.construct_old(ctx_new, load_class(fam.legacy_classes[dst]), dict(state))
    ctx.old_model, ctx.new_model = old, new
    inputs = []
    for batch in adapter.make_batches(ctx):
        fed_old = adapter.forward("old", _Feed(old), batch, ctx)
        fed_new = adapter.forward("new", _Feed(new), batch, ctx)
        inputs.append({**fed_old, **fed_new} if isinstance(fed_old, dict) else fed_old)
    return fam.name, old, new, inputs


def _key_map(rule_text: bytes, name: str, state: dict) -> dict[str, tuple[str, tuple[str, ...]]]:
    """source key -> (op, targets) as the engine applies the file to `state`."""
    rf = parse_rule_bytes(rule_text, name)
    refs = OrderedDict((k, TensorRef.from_torch(v)) for k, v in state.items())
    out = {}
    for ev in apply_state_rules(rf, refs).events:
        if ev.op == "restore":
            continue
        for s in ev.sources:
            out[s] = (ev.op, tuple(ev.targets))
    return out


ENTRIES = {e["file"]: e for e in manifest_entries(fusion=True)}


@pytest.mark.parametrize(("fixture", "edge"), CASES, ids=[f"{f}:{e}" for f, e in CASES])
def test_inference_reproduces_hand_written_mapping(fixture, edge):
    family, old, new, inputs = _models(ENTRIES[fixture], edge)
    src, dst = edge.split("-")
    inference = infer(old, new, inputs, family, src, dst)
    assert inference.proof.ok and inference.proof_inputs >= 2 and inference.probe_inputs >= 2
    state = old.state_dict()
    hand = (ROOT / "mappings" / family / f"{edge}.toml").read_bytes()
    expected = _key_map(hand, f"{family}/{edge}.toml", state)
    got = _key_map(inference.toml.encode(), "inferred", state)
    assert got == expected
    invert_file(parse_rule_bytes(inference.toml.encode(), "inferred"))  # as rollback-able as the hand-written
    # and the inferred file loads the new model strictly (the proof did it; check the text once more)
    from athelas_migrate.infer import apply_rules

    trial = copy.deepcopy(new)
    trial.load_state_dict(apply_rules(inference.toml, state), strict=True)
    assert Path(ROOT / "mappings").is_dir()
