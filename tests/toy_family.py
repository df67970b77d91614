"""A toy family written out as a folder (what a team adding its own model writes): a legacy LightningModule with
a nested layout, its refactored AthelasModule, the Family (declared with `SimpleFamily`), a verify adapter, an ONNX
spec, one rename rule and a sample batch. tests/test_toy_family.py writes it into tmp_path and drives the real CLI
with `ATHELAS_MIGRATE_FAMILIES` pointing at it."""

from __future__ import annotations

import textwrap
from pathlib import Path

#: The family folder's files: path relative to the folder -> text.
FILES = {
    "__init__.py": '''
        """Toy: a legacy `ToyLegacy` (everything under `net`) refactored into `Toy` (the same under `body`)."""

        from athelas_migrate.families.layout import LayoutBuilder
        from athelas_migrate.families.simple import SimpleFamily


        def layout(config, version):
            """Both versions' state dicts, in pure Python (no torch on the migration path)."""
            prefix = "net" if version == "v1" else "body"
            b = LayoutBuilder().linear(f"{prefix}.encoder.0", config["hidden"], config["in_dim"])
            return b.linear(f"{prefix}.head", config["num_classes"], config["hidden"]).build()


        class ToyFamily(SimpleFamily):
            name = "Toy"
            v2_class = "toyfam.models:Toy"
            legacy_classes = {"v1": "toyfam.legacy:ToyLegacy"}
            verify_adapter = "toyfam.verify:ToyAdapter"
            onnx_spec = "toyfam.onnx:spec"
            config_arg = {"v2": "config"}
            key_types = {"in_dim": "integer", "hidden": "integer"}
            layout = "toyfam:layout"
            signatures = {"v1": (r"net\\.encoder\\.0\\.(weight|bias)", r"net\\.head\\.(weight|bias)"),
                          "v2": (r"body\\.encoder\\.0\\.(weight|bias)", r"body\\.head\\.(weight|bias)")}


        FAMILIES = (ToyFamily(),)
    ''',
    "legacy.py": '''
        import lightning.pytorch as pl
        import torch
        from torch import nn


        class ToyLegacy(pl.LightningModule):
            def __init__(self, in_dim=4, hidden=8, num_classes=2, lr=0.05):
                super().__init__()
                self.save_hyperparameters()
                self.net = nn.ModuleDict({"encoder": nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh()),
                                          "head": nn.Linear(hidden, num_classes)})

            def forward(self, x):
                return self.net["head"](self.net["encoder"](x))

            def training_step(self, batch, batch_idx):
                x, y = batch
                return nn.functional.cross_entropy(self(x), y)

            def configure_optimizers(self):
                return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
    ''',
    "models.py": '''
        import torch
        from torch import nn

        from athelas_migrate.models import AthelasModule


        class Toy(AthelasModule):
            def __init__(self, config):
                super().__init__(config, with_metrics=False)
                self.save_hyperparameters(config)
                c = self.config
                self.body = nn.ModuleDict({"encoder": nn.Sequential(nn.Linear(c["in_dim"], c["hidden"]), nn.Tanh()),
                                           "head": nn.Linear(c["hidden"], c["num_classes"])})
                self.loss_op = nn.CrossEntropyLoss()

            def forward(self, x):
                return self.body["head"](self.body["encoder"](x))

            def batch_logits(self, batch):
                return self(batch[0])

            def get_labels(self, batch):
                return batch[1]

            def configure_optimizers(self):
                return torch.optim.Adam(self.parameters(), lr=float(self.config["lr"]))
    ''',
    "verify.py": '''
        from athelas_migrate.equivalence.sample_batch import SampleBatchAdapter


        class ToyAdapter(SampleBatchAdapter):
            family = "Toy"
    ''',
    "onnx.py": '''
        from pathlib import Path

        from athelas_migrate.equivalence.sample_batch import sample_batch_spec


        def spec(model):
            return sample_batch_spec(model, Path(__file__).with_name("sample_inputs.pt"))
    ''',
    "mappings/Toy/v1-v2.toml": '''
        family = "Toy"
        from = "v1"
        to = "v2"
        description = "the hand-written net.* moved under body.*"

        [[rules]]
        id = "net-to-body"
        op = "rename"
        match = '^net\\.(.*)$'
        to = 'body.\\1'
    ''',
    "fixtures/generate.py": '''
        """Train the legacy class a few steps with a Lightning Trainer (CPU) and save the v1 fixture."""

        import json
        import sys
        from pathlib import Path

        import lightning.pytorch as pl
        import torch

        from athelas_migrate.families.base import load_class

        here = Path(__file__).resolve().parent
        torch.manual_seed(0)
        x = torch.randn(32, 4)
        data = torch.utils.data.TensorDataset(x, (x.sum(1) > 0).long())
        model = load_class("toyfam.legacy:ToyLegacy")(in_dim=4, hidden=8, num_classes=2)
        trainer = pl.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=8))
        trainer.save_checkpoint(here / "toy_v1.ckpt")
        (here / "manifest.json").write_text(json.dumps([{"file": "toy_v1.ckpt", "family": "Toy", "version": "v1",
                                                         "kind": "lightning"}]))
        sys.exit(0)
    ''',
}


def write_toy_family(parent: Path, name: str = "toyfam") -> Path:
    """Write the toy family folder `parent/name` (its sample batch too) and return it."""
    import torch

    folder = parent / name
    for rel, text in FILES.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip().replace("toyfam", name))
    gen = torch.Generator().manual_seed(1)
    torch.save([torch.randn(5, 4, generator=gen), torch.randn(3, 4, generator=gen)], folder / "sample_inputs.pt")
    return folder
