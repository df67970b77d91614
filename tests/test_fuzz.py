"""Property-based tests: corrupted and truncated fixtures never crash the tool (only AthelasError, exit
codes 0/1/3, no output unless it succeeded, and then a loadable one), and every random chain of
invertible rules followed by its derived inverse gives back the original keys and bitwise values.

The number of corrupted inputs tried is summed over xdist workers and printed in the closing summary.
The default run is bounded (ATHELAS_FUZZ_EXAMPLES sets the count; `make fuzz` runs a deeper campaign)."""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES, manifest_entries
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from athelas_migrate import api
from athelas_migrate.errors import AthelasError, MissingInformationError
from athelas_migrate.io.tensor_ref import TensorRef
from athelas_migrate.io.zip_archive import Member, write_members
from athelas_migrate.rules.apply import apply_state_rules
from athelas_migrate.rules.graph import plan_path
from athelas_migrate.rules.schema import parse_rule_file

ENTRIES = manifest_entries(fusion=True)
CNN = [e for e in ENTRIES if e["family"] in ("BimodalCNN", "TextCNN", "TabAE")]
FUSION = [e for e in ENTRIES if e not in CNN]
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                print_blob=True, database=None)  # no .hypothesis/ in the working tree
SCALE = float(os.environ.get("ATHELAS_FUZZ_SCALE", "1"))  # `make fuzz` sets 10: a deeper, longer campaign


def examples(n: int) -> int:
    """The default run's bounded example count `n`, scaled for a deeper campaign."""
    return max(1, int(n * SCALE))
_ids = itertools.count()


@pytest.fixture(scope="session")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@functools.cache
def _bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


@functools.cache
def _members(name: str) -> tuple[tuple[str, bytes], ...]:
    with zipfile.ZipFile(FIXTURES / name) as zf:
        return tuple((i.filename, zf.read(i.filename)) for i in zf.infolist())


@st.composite
def byte_mutations(draw, size: int):
    """Truncation at any length, or up to 8 byte changes / short random overwrites, biased towards the
    file's structure: the start (data.pkl, local headers) and the end (central directory)."""
    if draw(st.integers(0, 3)) == 0:
        return [("truncate", draw(st.integers(0, size - 1)), b"")]
    edits = []
    for _ in range(draw(st.integers(1, 8))):
        region = draw(st.sampled_from(["anywhere", "head", "tail"]))
        lo, hi = {"anywhere": (0, size - 1), "head": (0, min(size, 4096) - 1),
                  "tail": (max(0, size - 4096), size - 1)}[region]
        pos = draw(st.integers(lo, hi))
        if draw(st.booleans()):
            edits.append(("xor", pos, bytes([draw(st.integers(1, 255))])))
        else:
            edits.append(("write", pos, draw(st.binary(min_size=1, max_size=32))))
    return edits


def apply_mutations(data: bytes, edits) -> bytes:
    out = bytearray(data)
    for kind, pos, value in edits:
        if kind == "truncate":
            del out[pos:]
        elif kind == "xor":
            out[pos] ^= value[0]
        else:
            out[pos : pos + len(value)] = value
    return bytes(out)


def check_migrate(src: Path, entry: dict, fuzz_dir: Path) -> str:
    """Migrate via the API; returns 'ok' or the error class. Fails on any non-AthelasError exception."""
    dst = fuzz_dir / f"out{next(_ids)}.ckpt"
    try:
        api.migrate(src, dst, overrides=entry["overrides"])
    except AthelasError as exc:
        assert not dst.exists()
        # one line, except a refusal for missing information, which lists each missing value on its own line
        assert str(exc) and ("\n" not in str(exc) or isinstance(exc, MissingInformationError))
        outcome = type(exc).__name__
    else:
        out = torch.load(dst, weights_only=True)  # a success must be loadable with plain torch
        assert isinstance(out, dict) and out["state_dict"]
        dst.unlink()
        outcome = "ok"
    finally:
        src.unlink(missing_ok=True)
    assert not [p for p in os.listdir(fuzz_dir) if p.startswith(f".{dst.name}.")], "a .partial was left"
    return outcome


@pytest.mark.parametrize("group", ["cnn", "fusion"])
def test_corrupted_bytes_never_crash_the_api(group, fuzz_dir, fuzz_counter):
    entries = CNN if group == "cnn" else FUSION

    @settings(FUZZ, max_examples=examples(400 if group == "cnn" else 40))
    @given(data=st.data())
    def prop(data):
        entry = data.draw(st.sampled_from(entries), label="fixture")
        raw = _bytes(entry["file"])
        edits = data.draw(byte_mutations(len(raw)), label="edits")
        src = fuzz_dir / f"in{next(_ids)}.ckpt"
        src.write_bytes(apply_mutations(raw, edits))
        fuzz_counter[f"api-bytes-{group}"] += 1
        fuzz_counter[f"outcome {check_migrate(src, entry, fuzz_dir)}"] += 1

    prop()


@functools.cache
def _pickle_ops(name: str) -> tuple[tuple[str, int, int], ...]:
    """(opcode, position, length) of the value-carrying opcodes of a fixture's data.pkl."""
    import pickletools

    pkl = next(d for n, d in _members(name) if n.endswith("/data.pkl"))
    ops, out = list(pickletools.genops(pkl)), []
    for (op, _arg, pos), nxt in zip(ops, ops[1:]):
        if op.name in ("BININT1", "BININT2", "BININT", "BINFLOAT", "BINUNICODE", "SHORT_BINUNICODE", "GLOBAL",
                       "NEWTRUE", "NEWFALSE", "NONE"):
            out.append((op.name, pos, nxt[2] - pos))
    return tuple(out)


_GLOBALS = [("torch", "FloatStorage"), ("torch", "HalfStorage"), ("torch", "LongStorage"), ("torch", "BoolStorage"),
            ("collections", "OrderedDict"), ("builtins", "set"), ("pathlib", "PosixPath"), ("numpy", "dtype"),
            ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_tensor_v2"), ("argparse", "Namespace"),
            ("lightning.fabric.utilities.data", "AttributeDict"), ("torch.nn.modules.linear", "Linear"),
            ("os", "system"), ("builtins", "eval"), ("copyreg", "_reconstructor"), ("_codecs", "encode")]


@st.composite
def value_edit(draw, op: str) -> bytes:
    """A new opcode of the same kind with a random argument: the pickle stays well-formed."""
    import struct

    if op in ("BININT1", "BININT2", "BININT"):
        n = {"BININT1": 1, "BININT2": 2, "BININT": 4}[op]
        return {"BININT1": b"K", "BININT2": b"M", "BININT": b"J"}[op] + draw(st.binary(min_size=n, max_size=n))
    if op == "BINFLOAT":
        return b"G" + struct.pack(">d", draw(st.floats(allow_nan=True, allow_infinity=True)))
    if op in ("BINUNICODE", "SHORT_BINUNICODE"):
        text = draw(st.one_of(st.text(max_size=12), st.sampled_from(["0", "1", "cpu", "storage", "state_dict",
                                                                     "hyper_parameters", "config", "weight"])))
        raw = text.encode("utf-8", "surrogatepass")
        return b"X" + struct.pack("<I", len(raw)) + raw
    if op == "GLOBAL":
        module, name = draw(st.sampled_from(_GLOBALS))
        return f"c{module}\n{name}\n".encode()
    return draw(st.sampled_from([b"\x88", b"\x89", b"N", b"K\x00", b"X\x00\x00\x00\x00"]))


@st.composite
def pickle_mutations(draw, name: str, size: int):
    """Raw byte damage (mostly a corrupted-pickle refusal), or 1-4 opcodes replaced by well-formed ones
    with other values (ints, floats, strings, globals): shapes, offsets, keys, dtypes, hyper-parameters."""
    edits = []
    if draw(st.integers(0, 3)) == 0:
        for _ in range(draw(st.integers(1, 4))):
            pos = draw(st.integers(0, size - 1))
            kind = draw(st.sampled_from(["xor", "write", "delete", "insert"]))
            value = bytes([draw(st.integers(1, 255))]) if kind == "xor" else draw(st.binary(min_size=1, max_size=8))
            edits.append((kind, pos, value))
        return edits
    ops = _pickle_ops(name)
    for i in sorted(set(draw(st.lists(st.integers(0, len(ops) - 1), min_size=1, max_size=4))), reverse=True):
        op, pos, length = ops[i]
        edits.append(("replace", pos, (length, draw(value_edit(op)))))
    return edits


def mutate_pickle(data: bytes, edits) -> bytes:
    out = bytearray(data)
    for kind, pos, value in edits:  # replacements come last-first, so earlier positions stay valid
        pos = min(pos, len(out) - 1)
        if kind == "replace":
            length, new = value
            out[pos : pos + length] = new
        elif kind == "xor":
            out[pos] ^= value[0]
        elif kind == "write":
            out[pos : pos + len(value)] = value
        elif kind == "delete":
            del out[pos : pos + len(value)]
        else:
            out[pos:pos] = value
    return bytes(out)


@settings(FUZZ, max_examples=examples(600))
@given(data=st.data())
def test_corrupted_pickles_with_valid_crcs_never_crash(data, fuzz_dir, fuzz_counter):
    """The CRC of data.pkl catches random damage; here the damage gets a valid CRC, so the pickle reader,
    the converters, the family code and the rules see it."""
    entry = data.draw(st.sampled_from(CNN), label="fixture")
    members = _members(entry["file"])
    pkl_index = next(i for i, (n, _) in enumerate(members) if n.endswith("/data.pkl"))
    pkl = members[pkl_index][1]
    edits = data.draw(pickle_mutations(entry["file"], len(pkl)), label="edits")
    src = fuzz_dir / f"in{next(_ids)}.ckpt"
    with open(src, "wb") as fh:
        write_members(fh, [Member(n, mutate_pickle(d, edits) if i == pkl_index else d)
                           for i, (n, d) in enumerate(members)])
    fuzz_counter["api-pickle"] += 1
    fuzz_counter[f"outcome {check_migrate(src, entry, fuzz_dir)}"] += 1


def _set_args(overrides: dict) -> list[str]:
    return [a for k, v in overrides.items() for a in ("--set", f"{k}={json.dumps(v)}")]


@settings(FUZZ, max_examples=examples(100))
@given(data=st.data())
def test_corrupted_bytes_cli_exit_codes(data, fuzz_dir, fuzz_counter):
    from click.testing import CliRunner

    from athelas_migrate.cli import main

    entry = data.draw(st.sampled_from(CNN), label="fixture")
    raw = _bytes(entry["file"])
    src = fuzz_dir / f"in{next(_ids)}.ckpt"
    src.write_bytes(apply_mutations(raw, data.draw(byte_mutations(len(raw)), label="edits")))
    dst = fuzz_dir / f"out{next(_ids)}.ckpt"
    fuzz_counter["cli-bytes"] += 1
    try:
        for args in (["inspect", src], ["ckpt", src, dst, *_set_args(entry["overrides"])]):
            result = CliRunner().invoke(main, [str(a) for a in args])
            assert isinstance(result.exception, SystemExit | None), result.exception
            assert result.exit_code in (0, 1, 3), (result.exit_code, result.stderr)
            if result.exit_code:
                assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
        assert (result.exit_code == 0) == dst.exists()
    finally:
        src.unlink(missing_ok=True)
        dst.unlink(missing_ok=True)


# --- random rule chains and their inverses -------------------------------------------------------------


def _tensor(draw, shape: tuple[int, ...], dtype=torch.float32) -> TensorRef:
    n = 1
    for s in shape:
        n *= s
    values = draw(st.lists(st.floats(-1e3, 1e3, width=16 if dtype == torch.float16 else 32), min_size=n,
                           max_size=n))
    return TensorRef.from_torch(torch.tensor(values, dtype=dtype).reshape(shape))


def _q(pattern: str) -> str:
    assert "'" not in pattern
    return f"'{pattern}'"


def _qs(*patterns: str) -> str:
    return "[" + ", ".join(_q(p) for p in patterns) + "]"


@st.composite
def first_edge(draw):
    """A state dict and the rules of a first edge over it: groups of keys handled by rules with capture
    groups (rename with reordered groups, transpose, split, concat, cast, reshape, drop with restore)."""
    state: OrderedDict[str, TensorRef] = OrderedDict()
    rules = []
    for g in range(draw(st.integers(1, 5))):
        op = draw(st.sampled_from(["rename", "transpose", "split", "concat", "cast", "reshape", "drop"]))
        items = draw(st.integers(1, 3))
        a, b = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        rid = f"g{g}-{op}"
        if op == "rename":
            for i in range(items):
                state[f"r{g}.{i}.w"] = _tensor(draw, (a,))
            rules.append(dict(id=rid, op="rename", match=_q(rf"^r{g}\.(\d+)\.(w)$"), to=_q(rf"R{g}.\2.x\1")))
        elif op == "transpose":
            for i in range(items):
                state[f"t{g}.{i}"] = _tensor(draw, (a, b))
            rules.append(dict(id=rid, op="transpose", match=_q(rf"^t{g}\.(\d+)$"), to=_q(rf"T{g}.\1"), dims="[0, 1]"))
        elif op == "split":
            for i in range(items):
                state[f"s{g}.{i}"] = _tensor(draw, (a + b, 2))
            rules.append(dict(id=rid, op="split", match=_q(rf"^s{g}\.(\d+)$"),
                              to=_qs(rf"S{g}.\1.a", rf"S{g}.\1.b"), dim="0", sizes=f"[{a}, {b}]"))
        elif op == "concat":
            for i in range(items):
                state[f"c{g}.{i}.x"] = _tensor(draw, (a, 2))
                state[f"c{g}.{i}.y"] = _tensor(draw, (b, 2))
            rules.append(dict(id=rid, op="concat", match=_qs(rf"^c{g}\.(\d+)\.x$", rf"^c{g}\.(\d+)\.y$"),
                              to=_q(rf"C{g}.\1"), dim="0", sizes=f"[{a}, {b}]"))
        elif op == "cast":  # float16 -> float32 widens: exactly invertible
            for i in range(items):
                state[f"f{g}.{i}"] = _tensor(draw, (a,), torch.float16)
            rules.append(dict(id=rid, op="cast", match=_q(rf"^f{g}\.(\d+)$"), to=_q(rf"F{g}.\1"),
                              dtype='"float32"', from_dtype='"float16"'))
        elif op == "reshape":
            for i in range(items):
                state[f"p{g}.{i}"] = _tensor(draw, (a, b))
            rules.append(dict(id=rid, op="reshape", match=_q(rf"^p{g}\.(\d+)$"), to=_q(rf"P{g}.\1"),
                              shape=f"[{a * b}]", from_shape=f"[{a}, {b}]"))
        else:  # a duplicate of another tensor, dropped, restored on rollback by copying its anchor
            for i in range(items):
                state[f"d{g}.{i}.src"] = t = _tensor(draw, (a,))
                state[f"d{g}.{i}.dup"] = t
            rules.append(dict(id=f"{rid}-keep", op="rename", match=_q(rf"^d{g}\.(\d+)\.src$"), to=_q(rf"D{g}.\1")))
            anchor, restored = _q(rf"^d{g}\.(\d+)\.src$"), _q(rf"d{g}.\1.dup")
            rules.append(dict(id=rid, op="drop", match=_q(rf"^d{g}\.(\d+)\.dup$"), reason='"duplicate"',
                              restore=f'{{ anchor = {anchor}, key = {restored}, value = "copy" }}'))
    return state, rules


def later_edge(draw, keys_shapes: dict[str, tuple[tuple[int, ...], str]], k: int) -> list[dict]:
    """Rules for edge k over the keys the previous edge produced: one rule per key, one capture group."""
    rules = []
    for j, (key, (shape, dtype)) in enumerate(keys_shapes.items()):
        m = _q(f"^({re.escape(key)})$")
        ops = ["rename"] + (["transpose"] if len(shape) == 2 else []) + \
              (["split"] if shape and shape[0] >= 2 else []) + (["cast"] if dtype == "float16" else [])
        op = draw(st.sampled_from(ops))
        rid = f"k{j}-{op}"
        if op == "rename":
            rules.append(dict(id=rid, op="rename", match=m, to=_q(rf"e{k}.\1")))
        elif op == "transpose":
            rules.append(dict(id=rid, op="transpose", match=m, to=_q(rf"e{k}t.\1"), dims="[1, 0]"))
        elif op == "cast":
            rules.append(dict(id=rid, op="cast", match=m, to=_q(rf"e{k}f.\1"), dtype='"float64"',
                              from_dtype='"float16"'))
        else:
            rules.append(dict(id=rid, op="split", match=m, to=_qs(rf"e{k}a.\1", rf"e{k}b.\1"),
                              dim="0", sizes=f"[1, {shape[0] - 1}]"))
    return rules


def write_rule_file(path: Path, src: str, dst: str, rules: list[dict]) -> None:
    lines = ['family = "Fuzz"', f'from = "{src}"', f'to = "{dst}"', 'description = "generated"', ""]
    for r in rules:
        lines.append("[[rules]]")
        lines += [f'{k} = "{v}"' if k in ("id", "op") else f"{k} = {v}" for k, v in r.items()]
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def _apply_chain(chain, state):
    for rf in chain:
        state = apply_state_rules(rf, state).state
    return state


@settings(FUZZ, max_examples=examples(300))
@given(data=st.data())
def test_rule_chain_then_inverse_is_identity(data, fuzz_dir):
    state, rules = data.draw(first_edge(), label="first edge")
    root = fuzz_dir / f"mappings{next(_ids)}"
    edges = data.draw(st.integers(1, 3), label="edges")
    current = state
    for k in range(1, edges + 1):
        if k > 1:
            rules = later_edge(data.draw, {key: (tuple(t.shape), t.dtype) for key, t in current.items()}, k)
        path = root / "Fuzz" / f"v{k - 1}-v{k}.toml"
        write_rule_file(path, f"v{k - 1}", f"v{k}", rules)
        current = _apply_chain([parse_rule_file(path, path.name)], current)
    # the graph (first loaded now, with every edge) plans the same chain, and derives its inverse
    forward = _apply_chain(plan_path("Fuzz", "v0", f"v{edges}", str(root)), state)
    assert {k: v.digest() for k, v in forward.items()} == {k: v.digest() for k, v in current.items()}
    back = _apply_chain(plan_path("Fuzz", f"v{edges}", "v0", str(root)), forward)  # derived inverses
    assert set(back) == set(state)
    for key, t in state.items():
        assert back[key].dtype == t.dtype and back[key].shape == t.shape
        assert bytes(back[key].raw_bytes()) == bytes(t.raw_bytes()), key
