"""`athelas-migrate family new` (issue 15): a toy legacy/target pair is scaffolded into a family folder whose
generated fixture generator and generated test run (the test in a subprocess pytest with the folder in
ATHELAS_MIGRATE_FAMILIES: it migrates, verifies and rolls back the fixture); and the refusals write nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from athelas_migrate.family_path import FAMILIES_ENV

PAIR = '''
    import lightning.pytorch as pl
    import torch
    from torch import nn


    class OldToy(pl.LightningModule):
        def __init__(self, in_dim=4, hidden=8, num_classes=2):
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, num_classes))

        def forward(self, x):
            return self.net(x)


    class NewToy(pl.LightningModule):
        def __init__(self, in_dim=4, hidden=8, num_classes=2, dropout=0.0):
            super().__init__()
            self.save_hyperparameters()
            self.encoder = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh())
            self.head = nn.Linear(hidden, num_classes)

        def forward(self, x):
            return self.head(self.encoder(x))

        def configure_optimizers(self):  # the legacy class builds none: verify steps both with this one
            return torch.optim.Adam(self.parameters(), lr=1e-3)


    class OtherToy(NewToy):
        """Computes something else (ReLU instead of tanh): no mapping can be proven."""

        def forward(self, x):
            return self.head(self.encoder[0](x).relu())
'''


@pytest.fixture
def pair(tmp_path, monkeypatch):
    """`toypair.models` importable (in this process and in subprocesses), its arguments and a sample batch."""
    (tmp_path / "toypair").mkdir()
    (tmp_path / "toypair" / "__init__.py").write_text("")
    (tmp_path / "toypair" / "models.py").write_text(textwrap.dedent(PAIR))
    (tmp_path / "old.json").write_text(json.dumps({"in_dim": 4, "hidden": 8, "num_classes": 2}))
    (tmp_path / "new.json").write_text(json.dumps({"in_dim": 4, "hidden": 8, "num_classes": 2, "dropout": 0.0}))
    gen = torch.Generator().manual_seed(0)
    torch.save([torch.randn(6, 4, generator=gen) for _ in range(4)], tmp_path / "batch.pt")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    for name in [m for m in sys.modules if m == "toypair" or m.startswith("toypair.")]:
        del sys.modules[name]


def args(target="toypair.models:NewToy", into="fams"):
    return ["family", "new", "Toy", "--legacy", "toypair.models:OldToy", "--legacy-args", "old.json",
            "--target", target, "--target-args", "new.json", "--inputs", "batch.pt", "--into", into]


def test_scaffolded_family_migrates_verifies_and_rolls_back(pair, cli):
    code, out, err = cli(*args())
    assert code == 0, err
    folder = pair / "fams" / "toy"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "__init__.py", "fixtures/generate.py", "mappings/Toy/v1-v2.toml", "onnx.py", "sample_inputs.pt",
        "tests/test_toy.py", "verify.py"]
    rules = (folder / "mappings" / "Toy" / "v1-v2.toml").read_text()
    assert "match = '^net\\.2\\.(.*)$'" in rules and "to = 'head.\\1'" in rules  # proven by infer_rules
    assert 'key = "dropout"' in rules  # the target's extra constructor argument, set by an hparams rule
    env = {**os.environ, FAMILIES_ENV: str(folder), "PYTHONPATH": os.pathsep.join([str(pair), *sys.path])}
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                          str(folder / "tests")], capture_output=True, text=True, env=env, cwd=pair, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "1 passed" in res.stdout
    manifest = json.loads((folder / "fixtures" / "manifest.json").read_text())  # written by the generator
    assert manifest == [{"file": "toy_v1.ckpt", "family": "Toy", "version": "v1", "kind": "lightning"}]


def _written(root):
    """Everything under the --into directory."""
    into = root / "fams"
    return sorted(p.relative_to(into).as_posix() for p in into.rglob("*")) if into.exists() else []


def test_an_existing_folder_is_refused(pair, cli):
    (pair / "fams" / "toy").mkdir(parents=True)
    (pair / "fams" / "toy" / "mine.txt").write_text("keep")
    code, out, err = cli(*args())
    assert code == 2 and "exists" in err and err.count("\n") == 1, err
    assert _written(pair) == ["toy", "toy/mine.txt"]


def test_a_class_that_does_not_import_is_refused(pair, cli):
    code, out, err = cli(*args(target="toypair.models:Missing"))
    assert code == 2 and "cannot import" in err and "Traceback" not in err, err
    assert _written(pair) == []


def test_a_mapping_that_cannot_be_proven_is_refused(pair, cli):
    code, out, err = cli(*args(target="toypair.models:OtherToy"))
    assert code == 3 and "no mapping toypair.models:OldToy -> toypair.models:OtherToy" in err, err
    assert "Traceback" not in err
    assert _written(pair) == []  # the inference failed before the temporary folder was made: nothing at all


def test_a_class_taking_its_config_as_one_dict_is_recognised():
    """An AthelasModule takes `config={...}`: the family passes the config under that name (`config_arg`)."""
    from athelas_migrate.scaffold.build import config_arg

    class Whole:
        def __init__(self, config, *, device=None):
            pass

    class Keywords:
        def __init__(self, in_dim=4, hidden=8):
            pass

    assert config_arg(Whole, {"config": {"in_dim": 4}}) == "config"
    assert config_arg(Keywords, {"in_dim": 4, "hidden": 8}) is None
    assert config_arg(Keywords, {"in_dim": {"a": 1}}) is None  # one dict-valued keyword argument is not a config


def test_hyper_parameter_edits_between_the_two_constructors():
    from athelas_migrate.rules.schema import parse_rule_bytes
    from athelas_migrate.scaffold.build import hparam_rules

    text = 'family = "T"\nfrom = "v1"\nto = "v2"\n' + hparam_rules({"a": 1, "b": "x", "c": [1]},
                                                                      {"a": 2, "c": [1], "d": True})
    rules = {r.key: r for r in parse_rule_bytes(text.encode(), "t.toml").hparams}
    assert (rules["a"].op, rules["a"].value, rules["a"].previous) == ("set", 2, 1)
    assert (rules["b"].op, rules["b"].value) == ("drop", "x")  # restored on rollback
    assert (rules["d"].op, rules["d"].value, rules["d"].if_missing) == ("set", True, True)
    assert "c" not in rules


def test_an_unwritable_destination_is_refused(pair, cli):
    (pair / "blocker").write_text("a file where the --into directory would go")
    code, out, err = cli(*args(into="blocker/fams"))
    assert code == 4 and "cannot write" in err and "Traceback" not in err, err
    assert (pair / "blocker").read_text().startswith("a file")
