"""A migrated checkpoint resumes training in the refactored model exactly where the legacy one stopped."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from athelas_migrate import api
from athelas_migrate.models import BimodalCNN

ROOT = Path(__file__).resolve().parents[1]
ENTRIES = {e["file"]: e for e in json.loads((ROOT / "fixtures" / "manifest.json").read_text())}


class _Capture(pl.Callback):
    """Records the restored counters and optimizer state at the moment training resumes."""

    def on_train_start(self, trainer, pl_module):
        self.step, self.epoch = trainer.global_step, trainer.current_epoch
        opt = trainer.optimizers[0]
        names = {id(p): n for n, p in pl_module.named_parameters()}
        self.state = {names[id(p)]: {k: v.clone() for k, v in opt.state[p].items()}
                      for g in opt.param_groups for p in g["params"] if p in opt.state}


@pytest.mark.parametrize("fixture", ["bimodal_cnn_v1.ckpt", "bimodal_cnn_v1_multiclass.ckpt",
                                     "multimodal_cnn_v0.ckpt"])
def test_fit_resumes_from_migrated_checkpoint(fixture, tmp_path):
    entry = ENTRIES[fixture]
    result = api.migrate(ROOT / "fixtures" / fixture, tmp_path / "v2.ckpt", overrides=entry["overrides"])
    legacy_ckpt = torch.load(ROOT / "fixtures" / fixture, weights_only=True)
    io = torch.load(ROOT / "fixtures" / entry["io"], weights_only=True)
    batch = dict(io["inputs"])
    batch["label"] = torch.arange(len(io["outputs"])) % result.config["num_classes"]
    model = BimodalCNN.load_from_checkpoint(tmp_path / "v2.ckpt")
    cap = _Capture()
    trainer = pl.Trainer(max_steps=legacy_ckpt["global_step"] + 1, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[cap], num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(model, DataLoader([batch], batch_size=None), ckpt_path=tmp_path / "v2.ckpt")
    assert cap.step == legacy_ckpt["global_step"]
    assert cap.epoch == legacy_ckpt["epoch"]
    rename = {t.source: t.target for t in result.traces if t.target}
    params = [k for k in result.family.expected(result.config, "v1").parameters]
    legacy_state = legacy_ckpt["optimizer_states"][0]["state"]
    assert len(cap.state) == len(legacy_state) > 0
    for pid, st in legacy_state.items():
        target = rename[params[pid]]
        for name, value in st.items():
            assert torch.equal(cap.state[target][name], torch.as_tensor(value)), (target, name)
    assert trainer.global_step == legacy_ckpt["global_step"] + 1
