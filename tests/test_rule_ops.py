"""Rule ops are objects in one registry: each parses, applies and inverts in one class, and a new op needs the
registry alone. Rule files say why they exist (`since`), and `history` shows it."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from athelas_migrate.cli import main
from athelas_migrate.errors import EXIT_REFUSED, NotInvertibleError, RuleError
from athelas_migrate.io.tensor_ref import TensorRef
from athelas_migrate.rules import graph
from athelas_migrate.rules.apply import apply_state_rules
from athelas_migrate.rules.inverse import invert_file
from athelas_migrate.rules.ops import HPARAM_OPS, OPS, HparamOp, StateOp, file_ops
from athelas_migrate.rules.ops.fields import require
from athelas_migrate.rules.ops.keyed import MatchOp
from athelas_migrate.rules.schema import SINCE_MAX_CHARS, parse_rule_bytes

ROOT = Path(__file__).resolve().parents[1]
_APPLY_HOOKS = {StateOp: ("apply_key", "apply_group", "add_keys"), HparamOp: ("apply",)}


def _overrides(cls: type, base: type, name: str) -> bool:
    return getattr(cls, name).__func__ is not getattr(base, name).__func__


def _missing_hooks(cls: type, base: type) -> list[str]:
    """What `cls` lacks to be a complete op: parse (unless made only by inversion), apply, invert or a reason."""
    missing = []
    parse = "parse" if base is StateOp else "parse_fields"
    if cls.in_files and not _overrides(cls, base, parse) and base is StateOp:
        missing.append(parse)
    if not any(_overrides(cls, base, hook) for hook in _APPLY_HOOKS[base]):
        missing.append("apply")
    if not _overrides(cls, base, "inverse") and not cls.one_way:
        missing.append("inverse (or one_way with a reason)")
    return missing


@pytest.mark.parametrize("registry,base", [(OPS, StateOp), (HPARAM_OPS, HparamOp)], ids=["state", "hparams"])
def test_every_registered_op_parses_applies_and_inverts(registry, base):
    assert registry, "no ops registered"
    incomplete = {name: _missing_hooks(cls, base) for name, cls in registry.items() if _missing_hooks(cls, base)}
    assert incomplete == {}
    assert all(cls.name == name for name, cls in registry.items())

    class Incomplete(base):  # the check itself can fail: an op with no apply and no inverse
        name = "incomplete"

    assert "inverse (or one_way with a reason)" in _missing_hooks(Incomplete, base)
    assert "apply" in _missing_hooks(Incomplete, base)


def test_every_op_a_rule_file_may_use_is_documented():
    from athelas_migrate.rules import schema

    readme = (ROOT / "README.md").read_text()
    for name in file_ops(OPS):
        assert f"| `{name}` |" in schema.__doc__ and f"| `{name}` |" in readme, name
    for name in file_ops(HPARAM_OPS):
        assert f"`{name}` (`key`" in schema.__doc__, name
    assert file_ops(OPS) == ["cast", "concat", "create", "drop", "narrow_head", "rename", "reshape", "split",
                             "transpose", "widen_head"]
    assert file_ops(HPARAM_OPS) == ["drop", "rename", "set"]


class Scale(MatchOp):
    """A toy op: multiply by `factor`; undone by dividing (exact for powers of two)."""

    name = "scale"
    fields = frozenset({"id", "op", "match", "to", "factor"})

    @classmethod
    def parse_params(cls, r: dict, where: str) -> dict[str, Any]:
        return {"factor": require(r, "factor", where, float)}

    @classmethod
    def transform(cls, rule, key, tensor, ctx):
        return [TensorRef.from_torch(tensor.to_torch() * rule.params["factor"], tensor.is_parameter)]

    @classmethod
    def inverse_params(cls, rule):
        return {"factor": 1 / rule.params["factor"]}


TOY = b"""
family = "Toy"
from = "v1"
to = "v2"
since = "PR 7: the toy model's head is scaled"

[[rules]]
id = "scale-head"
op = "scale"
match = '^head\\.(weight|bias)$'
to = 'classifier.\\1'
factor = 4.0

[[rules]]
id = "body"
op = "rename"
match = '^body\\.(.*)$'
to = 'encoder.\\1'
"""


def _toy_state() -> OrderedDict[str, TensorRef]:
    g = torch.Generator().manual_seed(0)
    return OrderedDict((k, TensorRef.from_torch(torch.randn(3, 2, generator=g), True))
                       for k in ("body.weight", "head.weight", "head.bias"))


def test_a_toy_op_registered_alone_parses_applies_and_rolls_back(monkeypatch, tmp_path):
    with pytest.raises(RuleError, match=r"unknown op 'scale' \(one of \['cast'"):
        parse_rule_bytes(TOY, "Toy/v1-v2.toml")
    monkeypatch.setitem(OPS, "scale", Scale)

    (tmp_path / "Toy").mkdir()
    (tmp_path / "Toy" / "v1-v2.toml").write_bytes(TOY)
    forward, = graph.plan_path("Toy", "v1", "v2", root=str(tmp_path))
    back, = graph.plan_path("Toy", "v2", "v1", root=str(tmp_path))
    graph.load_rule_files.cache_clear()
    state = _toy_state()

    out = apply_state_rules(forward, state)
    assert list(out.state) == ["encoder.weight", "classifier.weight", "classifier.bias"]
    torch.testing.assert_close(out.state["classifier.weight"].to_torch(), state["head.weight"].to_torch() * 4,
                               rtol=1e-6, atol=0)
    assert out.state["encoder.weight"] is state["body.weight"]
    assert [e.op for e in out.events] == ["rename", "scale", "scale"]

    rolled = apply_state_rules(back, out.state)
    assert list(rolled.state) == list(state)
    for key, tensor in state.items():
        torch.testing.assert_close(rolled.state[key].to_torch(), tensor.to_torch(), rtol=1e-6, atol=0)

    with pytest.raises(RuleError, match=r"Toy/v1-v2.toml#scale-head: field 'factor' must be float") as info:
        parse_rule_bytes(TOY.replace(b"factor = 4.0", b'factor = "4"'), "Toy/v1-v2.toml")
    assert (info.value.rule_file, info.value.rule_id) == ("Toy/v1-v2.toml", "scale-head")


def test_an_op_without_inverse_says_why_on_rollback(monkeypatch):
    class Noise(Scale):
        name = "noise"
        one_way = "noise cannot be subtracted again"  # wins over the inverse it inherits

    monkeypatch.setitem(OPS, "noise", Noise)
    rf = parse_rule_bytes(TOY.replace(b'"scale"', b'"noise"'), "Toy/v1-v2.toml")
    message = r"^Toy/v1-v2.toml#scale-head: noise cannot be subtracted again$"
    with pytest.raises(NotInvertibleError, match=message) as info:
        invert_file(rf)
    assert (info.value.rule_file, info.value.rule_id) == ("Toy/v1-v2.toml", "scale-head")


def test_since_is_parsed_and_optional():
    rf = parse_rule_bytes(TOY.replace(b'"scale"', b'"rename"').replace(b"factor = 4.0", b""), "Toy/v1-v2.toml")
    assert rf.since == "PR 7: the toy model's head is scaled"
    assert invert_file(rf).since == rf.since
    plain = parse_rule_bytes(b'family = "Toy"\nfrom = "v1"\nto = "v2"\n', "Toy/v1-v2.toml")
    assert plain.since == ""


@pytest.mark.parametrize("since,message", [
    ("123", "Toy/v1-v2.toml: field 'since' must be str"),
    ('["PR 1"]', "Toy/v1-v2.toml: field 'since' must be str"),
    ('"' + "x" * (SINCE_MAX_CHARS + 1) + '"', f"Toy/v1-v2.toml: 'since' is {SINCE_MAX_CHARS + 1} characters; at most"),
    ('"PR 1\\nsecond line"', "Toy/v1-v2.toml: 'since' must be one line of printable text"),
    ('"PR 1"\ndescription = 5', "Toy/v1-v2.toml: field 'description' must be str"),
])
def test_a_malformed_since_or_description_is_refused_with_exit_3(since, message, tmp_path, monkeypatch):
    (tmp_path / "Toy").mkdir()
    text = f'family = "Toy"\nfrom = "v1"\nto = "v2"\nsince = {since}\n'
    (tmp_path / "Toy" / "v1-v2.toml").write_text(text)
    with pytest.raises(RuleError) as exc:
        parse_rule_bytes(text.encode(), "Toy/v1-v2.toml")
    assert str(exc.value).startswith(message)

    monkeypatch.setattr(graph, "mappings_root", lambda: tmp_path)
    graph.load_rule_files.cache_clear()
    try:
        res = CliRunner().invoke(main, ["history"])
    finally:
        graph.load_rule_files.cache_clear()
    assert res.exit_code == EXIT_REFUSED
    assert message in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_every_bundled_rule_file_says_why_it_exists_and_history_shows_it():
    files = graph.load_rule_files()
    assert files and all(rf.since for rf in files), [rf.name for rf in files if not rf.since]
    res = CliRunner(env={"COLUMNS": "300"}).invoke(main, ["history", "BimodalCNN"])
    assert res.exit_code == 0, res.output
    for rf in files:
        if rf.family == "BimodalCNN":
            assert f"since: {rf.since}" in res.output


def test_history_prints_since_literally(tmp_path, monkeypatch):
    (tmp_path / "Toy").mkdir()
    (tmp_path / "Toy" / "v1-v2.toml").write_text('family = "Toy"\nfrom = "v1"\nto = "v2"\n'
                                                 'since = "PR 9: [bold]not markup[/]"\n')
    monkeypatch.setattr(graph, "mappings_root", lambda: tmp_path)
    graph.load_rule_files.cache_clear()
    try:
        res = CliRunner(env={"COLUMNS": "300"}).invoke(main, ["history", "Toy"])
    finally:
        graph.load_rule_files.cache_clear()
    assert res.exit_code == 0, res.output
    assert "since: PR 9: [bold]not markup[/]" in res.output
