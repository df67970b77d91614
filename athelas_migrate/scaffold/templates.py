"""The text of the files `family new` writes; `{placeholders}` are filled with `str.format` by build.py."""

from __future__ import annotations

INIT = '''"""{name}: {legacy} ({src}) -> {target} ({dst}).

Scaffolded by `athelas-migrate family new`. Detection reads the key signatures below (computed from both classes'
state dicts); layouts are read off the real classes on the meta device (SimpleFamily's fallback, which imports
torch): give `layout` a pure-Python function to keep migrations torch-free.
"""

from athelas_migrate.families.simple import SimpleFamily


class {cls}Family(SimpleFamily):
    name = {name!r}
    latest = {dst!r}
    v2_class = {target!r}
    legacy_classes = {{{src!r}: {legacy!r}}}
    verify_adapter = "{folder}.verify:{cls}Adapter"
    onnx_spec = "{folder}.onnx:spec"
    config_arg = {config_arg!r}
    key_types = {key_types!r}
    signatures = {{
        {src!r}: {old_signatures},
        {dst!r}: {new_signatures},
    }}


FAMILIES = ({cls}Family(),)
'''

VERIFY = '''"""Verify adapter of {name}: feeds `sample_inputs.pt` to both sides, trains one step with a probe loss."""

from athelas_migrate.equivalence.sample_batch import SampleBatchAdapter


class {cls}Adapter(SampleBatchAdapter):
    family = {name!r}
'''

ONNX = '''"""ONNX input spec of {name}: tensors shaped like the first sample input, dynamic batch axis."""

from pathlib import Path

from athelas_migrate.equivalence.sample_batch import sample_batch_spec


def spec(model):
    return sample_batch_spec(model, Path(__file__).with_name("sample_inputs.pt"))
'''

GENERATE = '''"""Write fixtures/{fixture} and manifest.json: the legacy class trained a few steps by a Trainer.

Each sample input is one training batch; the loss is the mean square of the output (a probe: the legacy training
step expects its own batches, which a sample batch does not hold). Run it with the legacy class importable.
"""

import json
from pathlib import Path

import lightning.pytorch as pl
import torch

from athelas_migrate.families.base import load_class

HERE = Path(__file__).resolve().parent
ARGS = {legacy_args!r}
CONFIG_ARG = {legacy_config_arg!r}
Legacy = load_class({legacy!r})


class Training(Legacy):
    """The legacy class with a probe training step (and Adam where it builds no optimizer); the checkpoint
    records its constructor arguments."""

    def training_step(self, batch, batch_idx):
        out = self(*batch) if isinstance(batch, tuple) else self(batch)
        return out.float().pow(2).mean()

    def configure_optimizers(self):
        if Legacy.configure_optimizers is not pl.LightningModule.configure_optimizers:
            return super().configure_optimizers()
        return torch.optim.Adam(self.parameters(), lr=1e-2)  # the class builds none (its script did)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["hyper_parameters"] = dict(ARGS[CONFIG_ARG]) if CONFIG_ARG else dict(ARGS)
        checkpoint["hparams_name"] = CONFIG_ARG or "kwargs"


def main():
    torch.manual_seed(0)
    inputs = torch.load(HERE.parent / "sample_inputs.pt", weights_only=True)
    model = Training(**ARGS)
    loader = torch.utils.data.DataLoader(inputs, batch_size=None, collate_fn=lambda x: x)
    trainer = pl.Trainer(max_steps={steps}, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, loader)
    trainer.save_checkpoint(HERE / {fixture!r})
    manifest = [{{"file": {fixture!r}, "family": {name!r}, "version": {src!r}, "kind": "lightning"}}]
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\\n")


if __name__ == "__main__":
    main()
'''

TEST = '''"""{name}: the fixture migrates {src} -> {dst}, verifies, and rolls back to the same tensors and hparams.

Runs the CLI with this folder in ATHELAS_MIGRATE_FAMILIES; the classes' packages must be importable (PYTHONPATH).
"""

import os
import runpy
import subprocess
import sys
from pathlib import Path

import torch

FOLDER = Path(__file__).resolve().parents[1]
FIXTURE = FOLDER / "fixtures" / {fixture!r}


def cli(*args):
    extra = os.environ.get("ATHELAS_MIGRATE_FAMILIES", "")
    env = {{**os.environ, "ATHELAS_MIGRATE_FAMILIES": os.pathsep.join(p for p in (str(FOLDER), extra) if p)}}
    res = subprocess.run([sys.executable, "-m", "athelas_migrate", *map(str, args)], capture_output=True,
                         text=True, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_migrate_verify_roll_back(tmp_path):
    if not FIXTURE.exists():
        runpy.run_path(str(FOLDER / "fixtures" / "generate.py"), run_name="__main__")
    new, back = tmp_path / "new.ckpt", tmp_path / "back.ckpt"
    assert "{name} {src} -> {dst}" in cli("ckpt", FIXTURE, new)  # detected, then migrated
    assert "PASS" in cli("verify", FIXTURE, new)
    cli("ckpt", new, back, "--to", {src!r})
    before, after = (torch.load(p, weights_only=True) for p in (FIXTURE, back))
    assert list(after["state_dict"]) == list(before["state_dict"])
    assert all(torch.equal(after["state_dict"][k], t) for k, t in before["state_dict"].items())
    assert after["hyper_parameters"] == before["hyper_parameters"]
'''
