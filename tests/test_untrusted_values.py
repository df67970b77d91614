"""Untrusted non-tensor values (issue 11, "nothing lost, nothing run"): bounded work, typed structure, bounded
option files. Every crafted input is refused with exit 3 (or handled, exit 0) and a message naming the path inside
the checkpoint; never exit 70, never a traceback.
"""

from __future__ import annotations

import copy
import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES

from athelas_migrate.errors import InputError, RuleError
from athelas_migrate.io import values
from athelas_migrate.rules.apply import apply_hparam_rules
from athelas_migrate.rules.schema import HparamRule

SETS = ("--set", 'tab_field_list=["ttm_conc_count","net_conc_amt","days_since_first_txn"]', "--set", "label_name=l")
AS_LIMIT = 4 << 30  # a regression that expands a bomb fails with MemoryError instead of eating the machine
_BASE: dict = {}


def _base() -> dict:
    if not _BASE:
        _BASE["v1"] = torch.load(FIXTURES / "bimodal_cnn_v1.ckpt", weights_only=True)
    return copy.deepcopy(_BASE["v1"])


def _crafted(tmp_path: Path, name: str, edit: Callable[[dict], None]) -> Path:
    ckpt = _base()
    edit(ckpt)
    path = tmp_path / f"{name}.ckpt"
    torch.save(ckpt, path)
    return path


def _hp(key, value) -> Callable[[dict], None]:
    return lambda c: c["hyper_parameters"].__setitem__(key, value)


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


def _run(*args: str, limit: bool = True) -> subprocess.CompletedProcess:
    """The real CLI in a child process, under an address-space limit; `timeout` only guards against a hang."""
    return subprocess.run([sys.executable, "-m", "athelas_migrate", *map(str, args)], capture_output=True, text=True,
                          preexec_fn=_limited if limit else None, timeout=300)


def _bomb() -> list:
    shared = [0]
    for _ in range(30):
        shared = [shared, shared]
    return shared  # 60 bytes of pickle, 2^31 values expanded


# ---- 1. bounded work: shared-reference bombs -----------------------------------------------------------------

@pytest.mark.parametrize("name,value,path,what", [
    ("bomb", _bomb(), "hyper_parameters.x[0]", "1,000,000 values"),
    ("bigstr", ["A" * 100_000] * 20_000, "hyper_parameters.x:", "64 MiB of strings"),
])
def test_shared_reference_bombs_are_refused_by_every_command(tmp_path, name, value, path, what):
    src = _crafted(tmp_path, name, _hp("x", value))
    for args in (("inspect", src), ("audit", src, *SETS), ("ckpt", src, tmp_path / "out.safetensors", *SETS)):
        r = _run(*args)
        assert r.returncode == 3, (args[0], r.returncode, r.stderr[-2000:])
        assert path in r.stderr and what in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]  # nothing written


def test_check_bounded_is_linear_and_names_the_smallest_subtree_over_the_limit():
    shared = "s" * 1000
    ok = {"a": [shared] * 1000, "b": {"c": [shared] * 1000}}  # 2 MB of strings expanded, fine
    assert values.check_bounded(ok) == (2007, 2_000_003)  # keys are strings too
    with pytest.raises(InputError, match=r"^f: hyper_parameters\.x\[0\]\[0\]\[0\]\[0\]\[0\]\[0\]\[0\]\[0\]\[0\]"
                                         r"\[0\]\[0\]: expands to more than 1,000,000 values"):
        values.check_bounded({"x": _bomb()}, "hyper_parameters", "f")
    deep: list = []
    for _ in range(values.MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(InputError, match="nested more than 100 levels"):
        values.check_bounded({"x": deep}, "", "f")
    cyclic: list = []
    cyclic.append(cyclic)
    with pytest.raises(InputError, match=r"x\[0\]: a value that contains itself"):
        values.check_bounded({"x": cyclic}, "", "f")


def test_huge_int_limit_is_pythons_own():
    values.check_bounded({"n": 10**values.MAX_INT_DIGITS - 1})  # 4300 digits: printable, fine
    with pytest.raises(InputError, match=r"n: an integer of more than 4300 digits"):
        values.check_bounded({"n": -(10**values.MAX_INT_DIGITS)})


# ---- 2. typed structure: the crafted values of the issue ------------------------------------------------------

L1 = "optimizer_states"
CASES = {  # name: (edit, expected exit, text the message must hold)
    "optimizer_states=5": (lambda c: c.__setitem__(L1, 5), 3, "optimizer_states: must be a list"),
    "param_groups=[5]": (lambda c: c[L1][0].__setitem__("param_groups", [5]), 3,
                         "optimizer_states[0].param_groups[0]: must be a dict"),
    "params=['a']": (lambda c: c[L1][0]["param_groups"][0].__setitem__("params", ["a"]), 3,
                     "optimizer_states[0].param_groups[0].params: must be a list of parameter ids"),
    "state key": (lambda c: c[L1][0].__setitem__("state", {"a": {}}), 3, "optimizer_states[0].state: keys must"),
    "class_weights='abc'": (_hp("class_weights", "abc"), 3, "hyper_parameters.class_weights: must be a list of num"),
    "kernel_size='x'": (_hp("kernel_size", "x"), 3, "hyper_parameters.kernel_size: must be a list of ints"),
    "tab_field_list=5": (_hp("tab_field_list", 5), 3, "hyper_parameters.tab_field_list: must be a list of strings"),
    "tokenizer=[5]": (_hp("tokenizer", [5]), 3, "hyper_parameters.tokenizer: must be a string"),
    "config=5": (_hp("config", 5), 3, "hyper_parameters.config: must be a mapping"),
    "config.lr='x'": (_hp("config", {"lr": "x"}), 3, "hyper_parameters.config.lr: must be a number"),
    "int hparam key": (_hp(5, 1), 3, "hyper_parameters: hyper-parameter names must be strings"),
    "nested int key": (_hp("extra", {"a": {7: 1}}), 3, "hyper_parameters.extra.a: hyper-parameter names"),
    "5000-digit int": (_hp("foo", 10**5000), 3, "hyper_parameters.foo: an integer of more than 4300 digits"),
    "lr_schedulers=5": (lambda c: c.__setitem__("lr_schedulers", 5), 3, "lr_schedulers: must be a list of dicts"),
    "stamp family list": (lambda c: c.__setitem__("athelas_migrate", {"family": ["x"], "layout": "v1"}), 3,
                          "athelas_migrate.family: must be a string"),
}
# Values a .ckpt keeps verbatim (and torch.load(weights_only=True) reads back), but JSON cannot hold.
JSONLESS = {"set": {1, 2}, "bytes": b"ab", "complex": 1j}


@pytest.mark.parametrize("case", list(CASES))
def test_crafted_values_are_refused_with_their_path(cli, tmp_path, case):
    edit, code, text = CASES[case]
    src = _crafted(tmp_path, "crafted", edit)
    for args in (("ckpt", src, tmp_path / "o.ckpt", *SETS), ("ckpt", src, tmp_path / "o.safetensors", *SETS),
                 ("audit", src, *SETS), ("inspect", src)):
        rc, _, err = cli(*args)
        assert (rc, args[0]) == (code, args[0]), err
        assert text in err and str(src) in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]


@pytest.mark.parametrize("kind", list(JSONLESS))
def test_values_json_cannot_hold_refuse_safetensors_only(cli, tmp_path, kind):
    src = _crafted(tmp_path, kind, _hp("foo", JSONLESS[kind]))
    rc, _, err = cli("ckpt", src, tmp_path / "o.safetensors", *SETS)
    assert rc == 3 and "hyper_parameters.config.foo: a value of type" in err and "write a .ckpt" in err, err
    assert not (tmp_path / "o.safetensors").exists()
    assert cli("ckpt", src, tmp_path / "o.ckpt", *SETS)[0] == 0  # a .ckpt keeps it, loadable with weights_only
    assert torch.load(tmp_path / "o.ckpt", weights_only=True)["hyper_parameters"]["config"]["foo"] == JSONLESS[kind]
    for args in (("inspect", src), ("audit", src, *SETS)):
        assert cli(*args)[0] == 0


@pytest.mark.parametrize("value", ["5", '"x"'])
def test_overrides_of_the_wrong_type_are_usage_errors(cli, tmp_path, value):
    src = FIXTURES / "bimodal_cnn_v1.ckpt"
    rc, _, err = cli("ckpt", src, tmp_path / "o.ckpt", "--set", f"tab_field_list={value}", "--set", "label_name=l")
    assert rc == 2 and "--set tab_field_list: tab_field_list takes a list" in err, err
    config = tmp_path / "c.json"  # the same check for a --config file
    config.write_text(json.dumps({"tab_field_list": json.loads(value)}))
    rc, _, err = cli("ckpt", src, tmp_path / "o.ckpt", "--config", config)
    assert rc == 2 and "tab_field_list takes a list" in err, err
    momentum = tmp_path / "sgd.ckpt"  # a value derived from the file (optimizer state) is typed too
    torch.save(_edit_momentum(), momentum)
    rc, _, err = cli("ckpt", momentum, tmp_path / "o.ckpt", *SETS)
    assert rc == 3 and "hyper-parameters.momentum: must be a number" in err, err


def _edit_momentum() -> dict:
    c = _base()
    c["optimizer_states"][0]["param_groups"][0]["momentum"] = "fast"
    c["hyper_parameters"].pop("optimizer_type", None)
    return c


def test_a_crafted_value_through_the_real_entry_point(tmp_path):
    src = _crafted(tmp_path, "pg", CASES["param_groups=[5]"][0])
    r = _run("ckpt", src, tmp_path / "o.ckpt", *SETS)
    assert r.returncode == 3 and "optimizer_states[0].param_groups[0]" in r.stderr and "Traceback" not in r.stderr


def test_v0_config_none_is_not_a_crash(cli, tmp_path):
    """`config: None` in a v0 checkpoint (found by sweeping hyper-parameter values): refused by layout, not 70."""
    ckpt = torch.load(FIXTURES / "multimodal_cnn_v0.ckpt", weights_only=True)
    ckpt["hyper_parameters"]["config"] = None
    torch.save(ckpt, tmp_path / "v0.ckpt")
    rc, _, err = cli("audit", tmp_path / "v0.ckpt")
    assert rc == 3 and "internal error" not in err, err


def test_module_object_in_pickled_hparams_is_refused(cli, tmp_path, monkeypatch):
    """A whole pickled legacy module (root class under its historical path) whose `_hparams` holds a layer."""
    import types

    module = "athelas.models.lightning.bimodal.pl_bimodal_cnn"
    parts = module.split(".")
    for name in (".".join(parts[: i + 1]) for i in range(len(parts))):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    cls = type("BimodalCNN", (torch.nn.Module,), {"__module__": module, "__qualname__": "BimodalCNN"})
    sys.modules[module].BimodalCNN = cls
    model = cls()
    model.head = torch.nn.Linear(2, 2)
    model._hparams = {"lr": 0.1, "layer": torch.nn.Linear(2, 2)}
    path = tmp_path / "module.pt"
    torch.save(model, path)
    for args in (("inspect", path), ("audit", path, *SETS)):
        rc, _, err = cli(*args)
        assert rc == 3 and "hyper_parameters.layer: a pickled torch.nn.modules.linear.Linear object" in err, err


TOP_KEYS = list(values._TOP_LEVEL)
REPLACEMENTS = {"5": 5, "'x'": "x", "[5]": [5], "{5: 5}": {5: 5}, "None": None}


@pytest.mark.parametrize("key", TOP_KEYS)
def test_fuzz_top_level_value_types(cli, tmp_path, key):
    """Every known top-level key replaced by values of the wrong type: exit 0 or 3 naming the key, never 70."""
    for label, value in REPLACEMENTS.items():
        src = _crafted(tmp_path, "fuzz", lambda c, v=value: c.__setitem__(key, copy.deepcopy(v)))
        for args in (("inspect", src), ("ckpt", src, tmp_path / "o.ckpt", "--force", *SETS)):
            rc, _, err = cli(*args)
            assert rc in (0, 3), (key, label, args[0], rc, err)
            if rc == 3:
                assert key in err, (key, label, err)


# ---- 3. option files ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("option", ["--config", "--bert-config"])
def test_option_files_must_be_small_regular_files(tmp_path, option):
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)  # no writer: a blocking open would wait forever
    for path, text in (("/dev/zero", "not a regular file"), (fifo, "not a regular file")):
        r = _run("audit", FIXTURES / "bimodal_cnn_v1.ckpt", option, path)
        assert r.returncode == 2 and f"{option} {path}: {text}" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_option_file_size_limit(tmp_path, monkeypatch):
    from athelas_migrate import overrides
    from athelas_migrate.errors import UsageError

    big = tmp_path / "big.json"
    big.write_text('{"a": "' + "x" * 100 + '"}')
    assert overrides.read_json_object(big, "--config") == {"a": "x" * 100}
    with pytest.raises(UsageError, match=r"--config .*big.json: 109 bytes is over the 0 MiB limit"):
        overrides.read_option_file(big, "--config", limit=64)


# ---- 4. hyper-parameter rule templates ------------------------------------------------------------------------

def test_template_with_a_missing_key_is_a_rule_error():
    rule = HparamRule("batch-key", "set", "text_batch_key", value="{text_name}_processed_{text_input_ids_key}",
                      has_value=True, source="BimodalCNN/v0-v1.toml#batch-key")
    config = {"text_name": "t", "text_input_ids_key": "ids"}
    apply_hparam_rules([rule], config)
    assert config["text_batch_key"] == "t_processed_ids"
    with pytest.raises(RuleError, match=r"v0-v1.toml#batch-key: template .* needs hyper-parameter "
                                        r"'text_input_ids_key'"):
        apply_hparam_rules([rule], {"text_name": "t"})
    rule.value = "{text_name.__class__}"
    with pytest.raises(RuleError, match="only plain"):
        apply_hparam_rules([rule], {"text_name": "t"})
