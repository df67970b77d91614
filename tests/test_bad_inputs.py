"""Every bad input gets one specific line on stderr, a documented exit code, no traceback, no output.

The table in docs/safety.md is generated from these cases: `test_docs_table_is_current` fails when
a message changes; regenerate it with `ATHELAS_REGEN_DOCS=1 .venv/bin/python -m pytest
tests/test_bad_inputs.py -k docs_table`.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES, ROOT, manifest_entries

V1 = next(e for e in manifest_entries() if e["file"] == "bimodal_cnn_v1.ckpt")
SETS = ("--set", "tab_field_list=" + '["ttm_conc_count","net_conc_amt","days_since_first_txn"]',
        "--set", "label_name=label")
DOC = ROOT / "docs" / "safety.md"
BEGIN, END = "<!-- bad-inputs:begin -->", "<!-- bad-inputs:end -->"
PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde"
       b"\x00\x00\x00\x0cIDATx\x9cc\xf8\xff\xff?\x00\x05\xfe\x02\xfe\xa7V\xbd\xfa\x00\x00\x00\x00IEND\xaeB`\x82")


def _edited(d: Path, name: str, edit: Callable[[dict], None]) -> Path:
    ckpt = copy.deepcopy(_V1_CKPT())
    edit(ckpt)
    torch.save(ckpt, d / name)
    return d / name


_CACHE: dict = {}


def _V1_CKPT() -> dict:
    if "v1" not in _CACHE:
        _CACHE["v1"] = torch.load(FIXTURES / V1["file"], weights_only=True)
    return _CACHE["v1"]


def _set(key: str, value: Callable[[dict], torch.Tensor]) -> Callable[[dict], None]:
    return lambda c: c["state_dict"].__setitem__(key, value(c["state_dict"]))


def _nonfinite(c: dict) -> None:
    c["state_dict"]["final_merge_network.1.weight"][0, 0] = float("nan")
    c["state_dict"]["tab_subnetwork.embedding_layer.1.bias"][0] = float("inf")


def _unreadable(d: Path) -> Path:
    p = d / "locked.ckpt"
    p.write_bytes((FIXTURES / V1["file"]).read_bytes())
    p.chmod(0)
    return p


def _corrupt_tensor_byte(d: Path) -> Path:
    from athelas_migrate.io.reader import read_checkpoint

    data = bytearray((FIXTURES / V1["file"]).read_bytes())
    ref = read_checkpoint(FIXTURES / V1["file"]).state_dict["text_subnetwork.embeddings.weight"].storage
    data[ref.offset + 3] ^= 0x10
    (d / "bitrot.ckpt").write_bytes(bytes(data))
    return d / "bitrot.ckpt"


def _malicious(d: Path) -> Path:
    ckpt = copy.deepcopy(_V1_CKPT())

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {d / 'pwned'}",)

    ckpt["hyper_parameters"]["callback"] = Payload()
    torch.save(ckpt, d / "evil.ckpt")
    return d / "evil.ckpt"


def _write(name: str, data: bytes) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        (d / name).write_bytes(data)
        return d / name

    return build


def _existing(d: Path) -> Path:
    (d / "new.ckpt").write_bytes(b"an older migration\n")
    return FIXTURES / V1["file"]


@dataclass
class Case:
    name: str
    old: Callable[[Path], Path]  # builds OLD in the case directory
    code: int
    contains: str  # what the message must say
    new: str = "new.ckpt"  # NEW, relative to the case directory
    args: tuple = SETS
    writes: bool = False  # the case succeeds (with a warning) and writes NEW
    env: tuple = ()  # environment settings for the run
    lines: int = 1  # lines of the message (a refusal for missing information lists each item on its own line)


CASES = [
    Case("empty file", _write("empty.ckpt", b""), 3, "empty file"),
    Case("truncated file (first 60%)", lambda d: _write("truncated.ckpt", (FIXTURES / V1["file"]).read_bytes()[
        : int(0.6 * (FIXTURES / V1["file"]).stat().st_size)])(d), 3, "truncated or corrupted checkpoint archive"),
    Case("not a checkpoint: text", _write("notes.ckpt", b"epoch 3, loss 0.12\n"), 3, "looks like text"),
    Case("not a checkpoint: a PNG image", _write("image.ckpt", PNG), 3, "looks like a PNG image"),
    Case("a directory", lambda d: (d / "dir.ckpt").mkdir() or d / "dir.ckpt", 3, "is a directory"),
    Case("unreadable file (chmod 000)", _unreadable, 3, "permission denied"),
    Case("OLD does not exist", lambda d: d / "missing.ckpt", 3, "no such file"),
    Case("checkpoint of an unknown model", lambda d: torch.save({"encoder.weight": torch.zeros(2, 2)},
                                                                d / "other.pt") or d / "other.pt",
         3, "matches no known model family"),
    Case("known family, a key missing", lambda d: _edited(d, "missing.ckpt", lambda c: c["state_dict"].pop(
        "final_merge_network.1.bias")), 3, "missing keys: final_merge_network.1.bias"),
    Case("known family, an extra key", lambda d: _edited(d, "extra.ckpt", _set(
        "text_subnetwork.extra.weight", lambda sd: torch.zeros(2))), 3, "unexpected keys: text_subnetwork.extra"),
    Case("known family, a wrong shape", lambda d: _edited(d, "shape.ckpt", _set(
        "final_merge_network.1.bias", lambda sd: torch.zeros(3))), 3, "wrong shapes: final_merge_network.1.bias"),
    Case("known family, int64 weights", lambda d: _edited(d, "dtype.ckpt", _set(
        "final_merge_network.1.weight", lambda sd: sd["final_merge_network.1.weight"].long())), 3,
         "non-floating tensors where weights belong: final_merge_network.1.weight (int64)"),
    Case("NaN and Inf weights, ATHELAS_MIGRATE_FULL_CHECKS=1 (allowed, warned)",
         lambda d: _edited(d, "nan.ckpt", _nonfinite), 0,
         "NaN or Inf values in: tab_subnetwork.embedding_layer.1.bias, final_merge_network.1.weight", writes=True,
         env=(("ATHELAS_MIGRATE_FULL_CHECKS", "1"),)),
    Case("NaN and Inf weights, default settings (allowed, warned: under the 256 MiB scan limit)",
         lambda d: _edited(d, "nan.ckpt", _nonfinite), 0,
         "NaN or Inf values in: tab_subnetwork.embedding_layer.1.bias, final_merge_network.1.weight", writes=True),
    Case("a hyper-parameter missing (no --set tab_field_list)", lambda d: FIXTURES / V1["file"], 3,
         "a migration needs 1 value(s) the file cannot tell:", args=(), lines=3),
    Case("conflicting --set values", lambda d: FIXTURES / V1["file"], 2, "conflicting --set values for label_name",
         args=(*SETS, "--set", "label_name=target")),
    Case("NEW is OLD", lambda d: _write("same.ckpt", (FIXTURES / V1["file"]).read_bytes())(d), 2,
         "is the input", new="same.ckpt"),
    Case("NEW already exists (no --force)", _existing, 2, "exists; pass --force to replace it"),
    Case("NEW under a regular file", lambda d: (_write("notadir", b"x")(d), FIXTURES / V1["file"])[1], 4,
         "cannot create the output directory", new="notadir/new.ckpt"),
    Case("unknown --to version", lambda d: FIXTURES / V1["file"], 2, "has no layout version 'v9'",
         args=(*SETS, "--to", "v9")),
    Case("a pickled os.system call in hyper_parameters", _malicious, 3,
         "references 'posix.system' at byte "),
    Case("a corrupted tensor byte (CRC mismatch)", _corrupt_tensor_byte, 3, "fails its CRC check"),
    Case("corrupted safetensors header", _write("w.safetensors", (40).to_bytes(8, "little") + b'{"w": {"dtype"'
                                                + b" " * 26), 3, "corrupted safetensors header"),
]


def run_case(case: Case, d: Path, cli, monkeypatch) -> tuple[int, str, str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    old = case.old(d)
    new = d / case.new
    for key, value in case.env:
        monkeypatch.setenv(key, value)
    if case.name.startswith("unreadable") and os.access(old, os.R_OK):  # root reads anything: emulate EACCES
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if os.fspath(p) == str(old)
                            else real(p, mode, **kw))
    try:
        code, out, err = cli("ckpt", old, new, *case.args)
    finally:
        monkeypatch.undo()
        if case.name.startswith("unreadable"):
            old.chmod(0o644)
    return code, out, err, new


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gets_one_line_a_code_and_no_output(case, tmp_path, cli, monkeypatch):
    before = None
    if case.name.startswith("NEW already exists"):
        before = b"an older migration\n"
    code, out, err, new = run_case(case, tmp_path / "case", cli, monkeypatch)
    assert code == case.code, (out, err)
    assert "Traceback" not in out + err
    if case.writes:
        assert err == "" and " ".join(case.contains.split()) in " ".join(out.split())
        assert ("warning" in out) == bool(case.contains)
        assert torch.load(new, weights_only=True)["state_dict"]
    else:
        assert err.startswith("error: ") and err.count("\n") == case.lines, err
        assert case.contains in err, err
        if before is not None:
            assert new.read_bytes() == before
        elif case.name == "NEW is OLD":
            assert new.read_bytes() == (FIXTURES / V1["file"]).read_bytes()
        else:
            assert not new.exists()
    assert not [p for p in os.listdir(new.parent if new.parent.is_dir() else tmp_path)
                if p.endswith(".partial")]
    assert not (tmp_path / "case" / "pwned").exists()


def test_missing_output_directories_are_created(tmp_path, cli):
    """The same rule in every command: parent directories of an output are created."""
    new = tmp_path / "no" / "such" / "dir" / "new.ckpt"
    code, _, err = cli("ckpt", FIXTURES / V1["file"], new, *SETS)
    assert code == 0 and new.exists(), err
    report = tmp_path / "reports" / "audit.md"
    code, _, err = cli("audit", FIXTURES / V1["file"], "--format", "md", "-o", report, *SETS)
    assert code == 0 and report.exists(), err


def test_force_replaces_an_existing_output(tmp_path, cli):
    new = tmp_path / "new.ckpt"
    new.write_bytes(b"an older migration\n")
    code, _, err = cli("ckpt", FIXTURES / V1["file"], new, *SETS, "--force")
    assert code == 0 and err == "" and torch.load(new, weights_only=True)["athelas_migrate"]["layout"] == "v2"


def test_debug_shows_the_traceback(tmp_path, cli):
    from athelas_migrate.errors import InputError

    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(InputError, match="empty file"):
        cli("--debug", "ckpt", tmp_path / "empty.ckpt", tmp_path / "new.ckpt")


def test_real_entry_point_prints_one_line_and_exits_3(tmp_path):
    (tmp_path / "notes.ckpt").write_bytes(b"not a checkpoint\n")
    proc = subprocess.run([sys.executable, "-m", "athelas_migrate", "ckpt", tmp_path / "notes.ckpt",
                           tmp_path / "new.ckpt"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 3 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and "looks like text" in proc.stderr


def test_markup_and_escape_sequences_in_keys_are_not_interpreted(tmp_path, cli):
    torch.save({"[/]x": torch.zeros(2)}, tmp_path / "markup.pt")
    code, _, err = cli("ckpt", tmp_path / "markup.pt", tmp_path / "new.ckpt")
    assert code == 3 and "[/]x" in err and err.count("\n") == 1
    torch.save({"\x1b]0;owned\x07w": torch.zeros(2)}, tmp_path / "ansi.pt")
    code, _, err = cli("ckpt", tmp_path / "ansi.pt", tmp_path / "new.ckpt")
    assert code == 3 and "\x1b" not in err and "control characters" in err


# --- the docs table -------------------------------------------------------------------------------


def render_table(rows: list[tuple[str, int, str]]) -> str:
    lines = ["| bad input | exit | message (stderr; stdout for the warning) |", "|---|---|---|"]
    for name, code, message in rows:
        lines.append(f"| {name} | {code} | `{message.replace('|', '¦')}` |")
    return "\n".join(lines)


def _normalize(text: str, d: Path) -> str:
    text = " ".join(text.split())
    text = text.replace(str(d), "<dir>").replace(str(FIXTURES), "fixtures")
    return re.sub(r"in \d+\.\d+ s", "in N s", text)


def test_docs_table_is_current(tmp_path, cli, monkeypatch):
    rows = []
    for i, case in enumerate(CASES):
        d = tmp_path / f"c{i}"
        code, out, err, _ = run_case(case, d, cli, monkeypatch)
        if case.writes:
            warning = re.search(r"warning .*?\(migrated unchanged\)", " ".join(out.split()))
            err = warning.group(0) if warning else "(no message; NEW written)"
        rows.append((case.name, code, _normalize(err, d)))
    table = render_table(rows)
    text = DOC.read_text() if DOC.exists() else ""
    if os.environ.get("ATHELAS_REGEN_DOCS"):
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        DOC.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")
        return
    current = text.partition(BEGIN)[2].partition(END)[0].strip()
    assert current == table, ("docs/safety.md is out of date; regenerate: ATHELAS_REGEN_DOCS=1 "
                              f"{sys.executable} -m pytest tests/test_bad_inputs.py -k docs_table")


def test_markup_in_hyper_parameters_is_printed_as_text(tmp_path, cli):
    ckpt = copy.deepcopy(_V1_CKPT())
    ckpt["hyper_parameters"]["model_class"] = "[/]"
    torch.save(ckpt, tmp_path / "markup.ckpt")
    assert cli("inspect", tmp_path / "markup.ckpt")[0] == 0
    assert cli("ckpt", tmp_path / "markup.ckpt", tmp_path / "new.ckpt", *SETS)[0] == 0
