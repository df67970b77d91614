"""A malformed rule file is refused with a RuleError naming the rule (exit 3), never a crash (exit 70) and never
misread: every field of every op, given a value of the wrong type, and params that do not fit the tensor."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from athelas_migrate.errors import EXIT_REFUSED, RuleError
from athelas_migrate.io.tensor_ref import TensorRef
from athelas_migrate.rules.apply import apply_state_rules
from athelas_migrate.rules.inverse import invert_file
from athelas_migrate.rules.schema import parse_rule_bytes

VALID = {
    "rename": {"match": r"^a\.(x)$", "to": r"b.\1"},
    "drop": {"match": "^a$", "reason": "r", "restore": {"anchor": "^b$", "key": "a", "value": "arange", "dim": 0,
                                                         "shape": [1, -1], "dtype": "int64", "when": "w",
                                                         "strict": True}},
    "drop-fill": {"match": "^a$", "reason": "r", "restore": {"key": "a", "value": "fill", "fill": 0.0,
                                                              "shape": ["h", 2], "dtype": "float32"}},
    "transpose": {"match": "^a$", "to": "b", "dims": [0, 1]},
    "reshape": {"match": "^a$", "to": "b", "shape": [2, 2], "from_shape": [4]},
    "cast": {"match": "^a$", "to": "b", "dtype": "float64", "from_dtype": "float32"},
    "split": {"match": "^a$", "to": ["b", "c"], "dim": 0, "sizes": [1, 1]},
    "concat": {"match": ["^a$", "^b$"], "to": "c", "dim": 0, "sizes": [1, 1]},
    "create": {"to": "c", "fill": 1, "shape": [2], "reason": "r", "dtype": "float32"},
    "widen_head": {"match": "^a$", "to": "b"},
}
WRONG = [5, 1.5, True, {"k": "v"}, [1, 2], {}, [{"k": 1}]]


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, str):
        return "'" + value + "'"
    return repr(value)


def _file(op: str, fields: dict) -> bytes:
    body = "".join(f"{k} = {_toml(v)}\n" for k, v in fields.items())
    return f'family = "T"\nfrom = "v1"\nto = "v2"\n[[rules]]\nid = "r"\nop = "{op.split("-")[0]}"\n{body}'.encode()


def _variants():
    for op, fields in VALID.items():
        for name in fields:
            for wrong in WRONG:
                yield op, {**fields, name: wrong}, name
        for name in fields.get("restore", {}):
            for wrong in WRONG:
                yield op, {**fields, "restore": {**fields["restore"], name: wrong}}, f"restore.{name}"


def test_the_valid_tables_parse():
    for op, fields in VALID.items():
        parse_rule_bytes(_file(op, fields), "T/v1-v2.toml")


def test_a_field_of_the_wrong_type_is_a_rule_error_or_a_value_of_the_right_kind():
    """Either refused as a RuleError, or accepted only where a scalar of that type is a valid value (a number
    where any number is allowed); a crash (TypeError) or a dict read as its keys fails here."""
    crashes, misread = [], []
    for op, fields, name in _variants():
        try:
            rf = parse_rule_bytes(_file(op, fields), "T/v1-v2.toml")
        except RuleError as exc:
            assert str(exc).startswith("T/v1-v2.toml#r: "), exc
            continue
        except Exception as exc:  # noqa: BLE001 - the point of the test: any other exception is a crash
            crashes.append((op, name, type(exc).__name__))
            continue
        rule = rf.rules[0]
        if "k" in [p.pattern for p in rule.match] + rule.to:  # the dict {k = "v"} read as the list ["k"]
            misread.append((op, name))
    assert crashes == [] and misread == []


def _state(**tensors) -> OrderedDict[str, TensorRef]:
    return OrderedDict((k, TensorRef.from_torch(v, True)) for k, v in tensors.items())


@pytest.mark.parametrize("op,fields,state,message", [
    ("reshape", {"match": "^a$", "to": "b", "shape": [3, 3]}, {"a": torch.ones(4)},
     "reshape does not fit a (shape [4])"),
    ("transpose", {"match": "^a$", "to": "b", "dims": [0, 5]}, {"a": torch.ones(2, 2)},
     "transpose does not fit a (shape [2, 2])"),
    ("split", {"match": "^a$", "to": ["b", "c"], "dim": 3, "sizes": [1, 1]}, {"a": torch.ones(2)},
     "split does not fit a (shape [2])"),
    ("concat", {"match": ["^a$", "^b$"], "to": "c", "dim": 0, "sizes": [1, 1]},
     {"a": torch.ones(1, 2), "b": torch.ones(1, 3)}, "concat does not fit a (shape [1, 2])"),
])
def test_params_that_do_not_fit_the_tensor_are_refused(op, fields, state, message):
    rf = parse_rule_bytes(_file(op, fields), "T/v1-v2.toml")
    with pytest.raises(RuleError) as exc:
        apply_state_rules(rf, _state(**state))
    assert str(exc.value).startswith(f"T/v1-v2.toml#r: {message}")
    assert exc.value.exit_code == EXIT_REFUSED


def test_a_restore_that_does_not_fit_its_anchor_is_refused():
    fields = {"match": "^a$", "reason": "r", "restore": {"anchor": "^b$", "key": "a", "value": "arange", "dim": 4}}
    back = invert_file(parse_rule_bytes(_file("drop", {**fields}) + b"[[rules]]\nid = 'k'\nop = 'rename'\n"
                                        b"match = '^(b)$'\nto = '\\1'\n", "T/v1-v2.toml"))
    with pytest.raises(RuleError, match=r"^T/v1-v2.toml#r \(inverse\): restore does not fit \^b\$ \(shape \[2\]\)"):
        apply_state_rules(back, _state(b=torch.ones(2)))


@pytest.mark.parametrize("template", [r"b.\5", r"b.\g<name>", r"b.\q"])
def test_a_target_template_the_regex_cannot_fill_is_refused_when_the_file_loads(template):
    with pytest.raises(RuleError, match=r"^T/v1-v2.toml#r: invalid target template"):
        parse_rule_bytes(_file("rename", {"match": r"^a\.(x)$", "to": template}), "T/v1-v2.toml")


@pytest.mark.parametrize("op,extra", [("rename", "dims"), ("transpose", "sizes"), ("reshape", "dtype"),
                                      ("cast", "shape"), ("split", "from_shape"), ("widen_head", "dim"),
                                      ("drop", "to"), ("rename", "restore")])
def test_a_field_of_another_op_is_refused_not_ignored(op, extra):
    """`op = "rename"` with `dims` (a transpose meant) would silently copy the tensor untransposed."""
    fields = {**VALID[op], extra: VALID["cast"]["dtype"] if extra == "dtype" else [0, 1]}
    with pytest.raises(RuleError, match=rf"^T/v1-v2.toml#r: unknown fields \['{extra}'\]$"):
        parse_rule_bytes(_file(op, fields), "T/v1-v2.toml")


HPARAMS = {"set": {"key": "k", "value": 1, "if_missing": True, "previous": 0},
           "rename": {"key": "k", "to": "j"},
           "drop": {"key": "k", "reason": "r", "value": 1}}


def _hparam_file(op: str, fields: dict) -> bytes:
    body = "".join(f"{k} = {_toml(v)}\n" for k, v in fields.items())
    return f'family = "T"\nfrom = "v1"\nto = "v2"\n[[hparams]]\nid = "h"\nop = "{op}"\n{body}'.encode()


@pytest.mark.parametrize("op,fields,message", [
    ("set", {**HPARAMS["set"], "if_mising": True}, r"unknown fields \['if_mising'\]"),
    ("set", {**HPARAMS["set"], "if_missing": "no"}, "field 'if_missing' must be bool"),
    ("set", {**HPARAMS["set"], "reason": "r"}, r"unknown fields \['reason'\]"),
    ("rename", {**HPARAMS["rename"], "value": 1}, r"unknown fields \['value'\]"),
    ("drop", {**HPARAMS["drop"], "to": "j"}, r"unknown fields \['to'\]"),
])
def test_an_hparam_rule_with_a_field_its_op_does_not_take_is_refused(op, fields, message):
    """A typo (`if_mising`) or a string where a flag belongs (`if_missing = "no"`, which read as true) would
    silently change what the edge does; a `reason` on a set would make its rollback treat it as a drop."""
    parse_rule_bytes(_hparam_file(op, HPARAMS[op]), "T/v1-v2.toml")
    with pytest.raises(RuleError, match=rf"^T/v1-v2.toml#h: {message}$"):
        parse_rule_bytes(_hparam_file(op, fields), "T/v1-v2.toml")


def test_an_hparam_field_of_the_wrong_type_is_a_rule_error():
    for op, fields in HPARAMS.items():
        for name in ("key", "to", "reason", "if_missing"):
            if name not in fields:
                continue
            for wrong in WRONG:
                if name == "if_missing" and isinstance(wrong, bool):
                    continue
                with pytest.raises(RuleError):
                    parse_rule_bytes(_hparam_file(op, {**fields, name: wrong}), "T/v1-v2.toml")
