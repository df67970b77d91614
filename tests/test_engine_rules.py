"""The rule engine: schema validation, strictness refusals (with their messages), inverses, path finding."""

from __future__ import annotations

import re
import textwrap
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from athelas_migrate.errors import NotInvertibleError, RuleError, UsageError
from athelas_migrate.io.tensor_ref import TensorRef
from athelas_migrate.rules.apply import apply_state_rules
from athelas_migrate.rules.graph import load_rule_files, plan_path
from athelas_migrate.rules.inverse import invert_file, invert_rename
from athelas_migrate.rules.schema import parse_rule_file


def _rules(tmp_path: Path, body: str, name: str = "F/v1-v2.toml") -> object:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('family = "F"\nfrom = "v1"\nto = "v2"\n' + textwrap.dedent(body))
    return parse_rule_file(path, name)


def _state(**shapes: tuple[int, ...]) -> OrderedDict:
    g = torch.Generator().manual_seed(0)
    return OrderedDict((k.replace("__", "."), TensorRef.from_torch(torch.randn(*s, generator=g))) for k, s in
                       shapes.items())


RENAME_AB = """
[[rules]]
id = "a-to-b"
op = "rename"
match = '^a\\.(\\d+)\\.weight$'
to = 'b.\\1.w'
"""


def test_rename_with_capture_groups(tmp_path):
    rf = _rules(tmp_path, RENAME_AB)
    res = apply_state_rules(rf, _state(a__0__weight=(2,), a__1__weight=(3,)))
    assert list(res.state) == ["b.0.w", "b.1.w"]
    assert res.events[0].rule == "F/v1-v2.toml#a-to-b"


def test_unmatched_key_is_refused_and_named(tmp_path):
    rf = _rules(tmp_path, RENAME_AB)
    with pytest.raises(RuleError, match=r"keys matched by no rule: stray\.bias"):
        apply_state_rules(rf, _state(a__0__weight=(2,), stray__bias=(2,)))


def test_key_matched_twice_is_refused_with_both_rule_ids(tmp_path):
    rf = _rules(tmp_path, RENAME_AB + """
[[rules]]
id = "everything"
op = "rename"
match = '^(.*)$'
to = 'x.\\1'
""")
    with pytest.raises(RuleError, match=r"more than one rule: a\.0\.weight \(a-to-b, everything\)"):
        apply_state_rules(rf, _state(a__0__weight=(2,)))


def test_target_produced_twice_is_refused(tmp_path):
    rf = _rules(tmp_path, """
[[rules]]
id = "collapse"
op = "rename"
match = '^(a|b)\\.weight$'
to = 'same.weight'
""")
    with pytest.raises(RuleError, match=r"produced more than once: same\.weight"):
        apply_state_rules(rf, _state(a__weight=(2,), b__weight=(2,)))


@pytest.mark.parametrize("body, message", [
    ('[[rules]]\nid = "x"\nop = "explode"\nmatch = "a"\n', "unknown op 'explode'"),
    ('[[rules]]\nid = "x"\nop = "rename"\nmatch = "a("\nto = "b"\n', "invalid regex"),
    ('[[rules]]\nid = "x"\nop = "drop"\nmatch = "a"\n', "missing field 'reason'"),
    ('[[rules]]\nid = "x"\nop = "rename"\nmatch = "a"\nto = "b"\n[[rules]]\nid = "x"\nop = "rename"\nmatch = "c"\n'
     'to = "d"\n', "duplicate rule id"),
    ('[[rules]]\nid = "x"\nop = "transpose"\nmatch = "a"\nto = "b"\ndims = [0]\n', "two integers"),
    ('[[rules]]\nid = "x"\nop = "rename"\nmatch = "a"\nto = "b"\ncode = "import os"\n', "unknown fields"),
])
def test_malformed_rule_files_are_refused(tmp_path, body, message):
    with pytest.raises(RuleError, match=re.escape(message)):
        _rules(tmp_path, body)


def test_tensor_ops_and_their_inverses_round_trip_bitwise(tmp_path):
    rf = _rules(tmp_path, """
[[rules]]
id = "t"
op = "transpose"
match = '^lin\\.weight$'
to = 'lin.weight_t'
dims = [0, 1]

[[rules]]
id = "r"
op = "reshape"
match = '^flat$'
to = 'square'
shape = [2, 3]
from_shape = [6]

[[rules]]
id = "c"
op = "cast"
match = '^half$'
to = 'full'
dtype = "float32"
from_dtype = "float16"

[[rules]]
id = "s"
op = "split"
match = '^qkv$'
to = ['q', 'k', 'v']
dim = 0
sizes = [1, 2, 3]
""")
    state = _state(lin__weight=(3, 4), flat=(6,), qkv=(6, 2))
    state["half"] = TensorRef.from_torch(torch.randn(5).half())
    out = apply_state_rules(rf, state).state
    assert torch.equal(out["lin.weight_t"].to_torch(), state["lin.weight"].to_torch().t())
    assert out["square"].shape == (2, 3) and out["full"].dtype == "float32"
    assert [out[k].shape for k in "qkv"] == [(1, 2), (2, 2), (3, 2)]
    back = apply_state_rules(invert_file(rf), out).state
    assert sorted(back) == sorted(state)
    for k in state:
        assert back[k].dtype == state[k].dtype and torch.equal(back[k].to_torch(), state[k].to_torch()), k


def test_lossy_rules_are_not_invertible_and_say_why(tmp_path):
    drop = _rules(tmp_path, '[[rules]]\nid = "gone"\nop = "drop"\nmatch = "^x$"\nreason = "unused"\n')
    with pytest.raises(NotInvertibleError, match="gone.*no way to restore"):
        invert_file(drop)
    cast = _rules(tmp_path, '[[rules]]\nid = "narrow"\nop = "cast"\nmatch = "^(x)$"\nto = "\\\\1"\ndtype = "float16"\n'
                            'from_dtype = "float32"\n', "G/v1-v2.toml")
    with pytest.raises(NotInvertibleError, match="loses information"):
        invert_file(cast)


def test_invert_rename_handles_groups_and_refuses_lossy_patterns():
    assert invert_rename(r"^text_subnetwork\.(embeddings\.weight|convs\..*)$", r"text_encoder.\1") == (
        r"^text_encoder\.(embeddings\.weight|convs\..*)$", r"text_subnetwork.\g<1>")
    with pytest.raises(ValueError, match="every captured group"):
        invert_rename(r"^(a)\.(b)$", r"x.\1")
    with pytest.raises(ValueError, match="outside a group"):
        invert_rename(r"^a.*b$", "c")


def test_bundled_rule_files_form_a_graph_with_paths_both_ways():
    files = load_rule_files()
    assert {(f.family, f.edge) for f in files} >= {("BimodalCNN", ("v0", "v1")), ("BimodalCNN", ("v1", "v2")),
                                                    ("TextCNN", ("v1", "v2")), ("TabAE", ("v1", "v2"))}
    down = plan_path("BimodalCNN", "v2", "v0")
    assert [(f.source_version, f.target_version) for f in down] == [("v2", "v1"), ("v1", "v0")]
    assert all(f.name.endswith("(inverse)") for f in down)
    with pytest.raises(UsageError, match="no layout version 'v9'"):
        plan_path("BimodalCNN", "v1", "v9")
