"""`train --set` takes the training settings its help names, and `predict` writes through the one atomic writer.

Fast: the refusals stop before any data is read; the one training run is 60 rows for one epoch.
"""

from __future__ import annotations

import json
import os
import stat

import pytest
from click.testing import CliRunner

from athelas_migrate.cli import main
from athelas_migrate.demo_data import write_demo_data
from athelas_migrate.errors import UsageError
from athelas_migrate.train import parse_train_sets


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    write_demo_data(str(root), n_rows=60, seed=1)
    return root


def _train(demo, out, *args):
    return CliRunner().invoke(main, ["train", str(demo / "train.csv"), "--config", str(demo / "config.json"),
                                     "--out", str(out), "--model", "TextCNN", "--accelerator", "cpu",
                                     "--devices", "1", "--no-progress", *args])


def test_training_settings_split_from_model_hyper_parameters():
    settings, rest = parse_train_sets(["max_epochs=2", "kernel_size=[3]", "val_fraction=0.25", "seed=7",
                                       "seed=7", "dropout_keep=0.5"])
    assert settings == {"max_epochs": 2, "val_fraction": 0.25, "seed": 7}
    assert rest == ["kernel_size=[3]", "dropout_keep=0.5"]
    for bad in (["max_epochs=2.5"], ["batch_size=x"], ["seed=true"], ["seed=1", "seed=2"]):
        with pytest.raises(UsageError):
            parse_train_sets(bad)


@pytest.mark.parametrize("item,message", [
    ("max_epochs=0", "max_epochs must be >= 1"),
    ("val_fraction=1.5", "val_fraction must be in (0, 1)"),
    ("batch_size=2.5", "batch_size takes an integer"),
])
def test_set_reaches_the_training_settings(demo, tmp_path, item, message):
    r = _train(demo, tmp_path / "o", "--set", item)
    assert r.exit_code == 2 and message in r.output, r.output
    assert not (tmp_path / "o").exists()  # refused before the output directory is touched


def test_set_max_epochs_wins_over_the_config_file(demo, tmp_path):
    assert json.loads((demo / "config.json").read_text())["max_epochs"] > 1
    r = _train(demo, tmp_path / "o", "--set", "max_epochs=1", "--set", "early_stop_patience=0")
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["history"]] == [1]


def test_predictions_are_written_like_every_other_output(tmp_path):
    """Through io.writer.atomic_output: permissions follow the umask (a private temporary file's 0600 did not),
    and no temporary file is left beside the output."""
    from athelas_migrate.models import TextCNN
    from athelas_migrate.models.config import resolve_config
    from athelas_migrate.predict import predict
    from athelas_migrate.text_vocab import Vocabulary

    cfg = resolve_config({"model_class": "text_cnn", "text_name": "t", "label_name": "y", "max_sen_len": 8,
                          "kernel_size": [3], "num_layers": 1, "num_channels": [4], "hidden_common_dim": 2,
                          "is_binary": True})
    vocab = Vocabulary.build(["good day", "bad day"])
    model = TextCNN(cfg, vocab_size=len(vocab), embed_size=4)
    vocab_path = vocab.save(str(tmp_path / "vocab.json"))
    (tmp_path / "d.csv").write_text("t,y\ngood day,1\nbad day,0\n")
    old = os.umask(0o022)
    try:
        res = predict(str(tmp_path / "m.ckpt"), str(tmp_path / "d.csv"), str(tmp_path / "p.tsv"), vocab=vocab_path,
                      model=model)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(res.out_path).st_mode) == 0o644
    lines = (tmp_path / "p.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["row", "prob_0", "prob_1", "prediction", "label"] and len(lines) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.csv", "p.tsv", "vocab.json"]


def test_the_train_facade_imports_nothing_heavy():
    """The CLI refuses a bad --model or --set through athelas_migrate.train before torch loads: the facade and
    every module of the training package keep torch, Lightning, torchmetrics and rich inside their functions."""
    import subprocess
    import sys

    code = ("import sys, athelas_migrate.train as t, pkgutil, importlib, athelas_migrate.training as p\n"
            "for m in pkgutil.iter_modules(p.__path__, p.__name__ + '.'): importlib.import_module(m.name)\n"
            "assert all(hasattr(t, name) for name in t.__all__)\n"
            "print(','.join(m for m in ('torch', 'lightning', 'torchmetrics', 'rich', 'pyarrow') "
            "if m in sys.modules) or '-')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "-", proc.stdout + proc.stderr
