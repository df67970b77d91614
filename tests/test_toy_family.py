"""A family added as one folder (issue 13): the toy family of tests/toy_family.py is written into tmp_path, its
fixture made by training the legacy class with a Lightning Trainer, and the real CLI, with only
`ATHELAS_MIGRATE_FAMILIES` pointing at the folder, inspects, migrates, verifies, rolls back, lists and exports it.
Nothing of the package is touched: the folder (its code, `mappings/Toy/v1-v2.toml`, `fixtures/`) is all there is.
It is held to the same completeness list as the bundled families (tests/family_checks.py)."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys

import pytest
import torch
from family_checks import check_family_complete, check_family_in_one_folder, manifest_families
from toy_family import write_toy_family

from athelas_migrate.family_path import FAMILIES_ENV


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The toy folder with its fixture `fixtures/toy_v1.ckpt`; the folder is importable in this process while the
    module's tests run (and forgotten afterwards)."""
    root = tmp_path_factory.mktemp("toy")
    folder = write_toy_family(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(FAMILIES_ENV, str(folder))
        _generate(folder)
        yield folder
    for name in [m for m in sys.modules if m == "toyfam" or m.startswith("toyfam.")]:
        del sys.modules[name]


def _generate(folder):
    """Run the folder's fixture generator (it trains the legacy class a few steps and writes the manifest)."""
    try:
        runpy.run_path(str(folder / "fixtures" / "generate.py"), run_name="__main__")
    except SystemExit as exc:
        assert exc.code == 0


def cli(folder, *args, cwd=None):
    env = {**os.environ, FAMILIES_ENV: str(folder)}
    return subprocess.run([sys.executable, "-m", "athelas_migrate", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=300)


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_the_toy_family_is_complete(toy):
    from athelas_migrate.family_path import import_family_folders

    (module,) = import_family_folders()
    (fam,) = module.FAMILIES
    check_family_complete(fam, manifest_families(toy / "fixtures"))
    assert check_family_in_one_folder(fam) == toy


def test_inspect_detects_toy_v1_with_evidence(toy):
    res = cli(toy, "inspect", "--json", toy / "fixtures" / "toy_v1.ckpt")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert (info["family"], info["layout"]) == ("Toy", "v1")
    assert any("net.encoder.0.weight" in line for line in info["evidence"]), info["evidence"]


def test_migrate_verify_roll_back(toy, tmp_path):
    old, new, back = toy / "fixtures" / "toy_v1.ckpt", tmp_path / "new.ckpt", tmp_path / "back.ckpt"
    res = cli(toy, "ckpt", old, new)
    assert res.returncode == 0, res.stderr
    before, after = _load(old), _load(new)
    assert list(after["state_dict"]) == [k.replace("net.", "body.", 1) for k in before["state_dict"]]
    for key, tensor in before["state_dict"].items():
        assert torch.equal(after["state_dict"][key.replace("net.", "body.", 1)], tensor)
    assert after["athelas_migrate"]["layout"] == "v2" and after["hparams_name"] == "config"

    res = cli(toy, "verify", old, new)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "PASS" in res.stdout

    res = cli(toy, "ckpt", new, back, "--to", "v1")
    assert res.returncode == 0, res.stderr
    rolled = _load(back)
    assert list(rolled["state_dict"]) == list(before["state_dict"])
    assert all(torch.equal(rolled["state_dict"][k], t) for k, t in before["state_dict"].items())
    assert rolled["hyper_parameters"] == before["hyper_parameters"]
    assert rolled["hparams_name"] == before["hparams_name"] == "kwargs"  # how Lightning passes them back


def test_history_lists_the_toy_edge(toy):
    res = cli(toy, "history")
    assert res.returncode == 0, res.stderr
    assert "Toy/v1-v2.toml" in res.stdout


def test_export_to_onnx(toy, tmp_path):
    pytest.importorskip("onnxruntime")
    res = cli(toy, "export", toy / "fixtures" / "toy_v1.ckpt", tmp_path / "toy.onnx")
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "toy.onnx").stat().st_size > 0


def test_a_folder_module_imported_first_still_registers(toy):
    """Importing the folder before the package (a training script's `import toyfam.models`) initialises the
    registry while the folder is half imported; its families join once its import finished."""
    code = ("import toyfam\n"
            "from athelas_migrate.families import FAMILIES, get_family\n"
            "assert get_family('Toy').v2_class == 'toyfam.models:Toy' and 'Toy' in FAMILIES\n")
    env = {**os.environ, FAMILIES_ENV: str(toy), "PYTHONPATH": str(toy.parent)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr


def test_signatures_claim_exactly_their_key_set():
    """A version is detected only when its regexes cover every key and each regex matches one: a file with one
    more key (another family's, a user's subclass) or one fewer is not claimed."""
    from athelas_migrate.families.simple import signature_match

    patterns = (r"net\.encoder\.0\.(weight|bias)", r"net\.head\.(weight|bias)")
    keys = ["net.encoder.0.weight", "net.encoder.0.bias", "net.head.weight", "net.head.bias"]
    assert signature_match(keys, patterns) == {patterns[0]: keys[:2], patterns[1]: keys[2:]}
    assert signature_match([*keys, "net.extra.weight"], patterns) is None
    assert signature_match(keys[:2], patterns) is None
    assert signature_match([], patterns) is None


def test_key_signatures_generalise_indices():
    from athelas_migrate.families.simple import key_signatures, signature_match

    sigs = key_signatures(["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias", "head.weight"])
    assert sigs == (r"net\.\d+\.weight", r"net\.\d+\.bias", r"head\.weight")
    assert signature_match(["net.0.weight", "net.0.bias", "net.4.weight", "net.4.bias", "head.weight"], sigs)


def test_the_toy_migration_path_is_torch_free(toy, tmp_path):
    """With a pure-Python `layout`, a SimpleFamily folder keeps inspect, ckpt and the rollback free of torch."""
    script = (
        "import sys\n"
        "from athelas_migrate.cli import main\n"
        "for args in sys.argv[1:]:\n"
        "    try:\n"
        "        main(args.split('|'), standalone_mode=False)\n"
        "    except SystemExit as exc:\n"
        "        assert not exc.code, args\n"
        "heavy = [m for m in ('torch', 'lightning') if m in sys.modules]\n"
        "assert not heavy, heavy\n")
    old, new = toy / "fixtures" / "toy_v1.ckpt", tmp_path / "new.ckpt"
    jobs = [f"inspect|{old}", f"ckpt|{old}|{new}", f"ckpt|{new}|{tmp_path / 'back.ckpt'}|--to|v1"]
    env = {**os.environ, FAMILIES_ENV: str(toy)}
    res = subprocess.run([sys.executable, "-c", script, *jobs], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
