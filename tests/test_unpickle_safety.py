"""Issue 11, read side: nothing from a checkpoint runs, whatever the API entry point or environment.

- the restricted unpickler refuses a non-allowlisted global at the opcode that names it, wherever its
  result goes (popped, memo-only, hidden in an OrderedDict's __dict__, ...);
- no API path hands a file to an unrestricted `torch.load` (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 set);
- the legacy (pre-zip) torch format is read by the same reader and migrates by copying.

Payloads would only create a marker file; an audit hook records any attempt to open it or to start
a process, so a regression is seen deterministically (no sleeps).
"""

from __future__ import annotations

import ast
import json
import pathlib
import sys
import zipfile

import pytest
import torch
from conftest import FIXTURES, P2, G, S, manifest_entries

from athelas_migrate import api
from athelas_migrate.errors import InputError, UnsafeCheckpointError
from athelas_migrate.io import safe_unpickle
from athelas_migrate.io.reader import read_checkpoint
from athelas_migrate.io.unpickling import limits, records
from athelas_migrate.io.zip_archive import Member, write_members

MANIFEST = {e["file"]: e for e in manifest_entries()}
V1 = MANIFEST["bimodal_cnn_v1.ckpt"]
PACKAGE = pathlib.Path(safe_unpickle.__file__).resolve().parents[1]

# --- an audit hook: what a payload would do, recorded as it is attempted --------------------------

_WATCH: dict[str, list] = {"marker": [], "events": []}


def _audit(event: str, args: tuple) -> None:
    marker = _WATCH.get("path")
    if marker is None:
        return
    if event in ("os.system", "subprocess.Popen", "os.posix_spawn", "os.exec"):
        _WATCH["events"].append(event)
    elif event == "open" and args and str(args[0]) == marker:
        _WATCH["events"].append(f"open {marker}")


sys.addaudithook(_audit)


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "pwned"
    _WATCH["path"], _WATCH["events"] = str(path), []
    yield path
    _WATCH["path"] = None
    assert not _WATCH["events"], f"a payload ran: {_WATCH['events']}"
    assert not path.exists()


# --- hand-written pickles --------------------------------------------------------------------------


EMPTY_SD = b"}" + S("state_dict") + b"}s"  # {"state_dict": {}} on the stack


def call(fn: bytes, *args: bytes) -> bytes:
    return fn + b"(" + b"".join(args) + b"tR"


def torch_zip(path: pathlib.Path, pkl: bytes) -> pathlib.Path:
    with open(path, "wb") as fh:
        write_members(fh, [Member("archive/data.pkl", pkl), Member("archive/byteorder", b"little")])
    return path


def crafted(marker: pathlib.Path) -> dict[str, tuple[bytes, str]]:
    """name -> (pickle, the class the refusal must name). Each would touch `marker` if it ran."""
    m = str(marker)
    touch = call(G("os", "system"), S(f"touch {m}"))
    return {
        "REDUCE then POP of os.system": (P2 + touch + b"0" + EMPTY_SD + b".", "os.system"),
        "memo-only global": (P2 + G("os", "system") + b"q\x000" + EMPTY_SD + b".", "os.system"),
        "global hidden in an OrderedDict's BUILD state": (
            P2 + G("collections", "OrderedDict") + b")R}" + S("x") + touch + b"sb0" + EMPTY_SD + b".", "os.system"),
        "builtins.eval": (P2 + call(G("builtins", "eval"), S(f"open({m!r}, 'w')")) + b"0" + EMPTY_SD + b".",
                          "builtins.eval"),
        "builtins.exec": (P2 + call(G("builtins", "exec"), S(f"open({m!r}, 'w')")) + b"0" + EMPTY_SD + b".",
                          "builtins.exec"),
        "builtins.getattr": (P2 + call(G("builtins", "getattr"), G("collections", "OrderedDict"), S("fromkeys"))
                             + b"0" + EMPTY_SD + b".", "builtins.getattr"),
        "builtins.__import__": (P2 + call(G("builtins", "__import__"), S("os")) + b"0" + EMPTY_SD + b".",
                                "builtins.__import__"),
        "builtins.open (protocol 2 name)": (P2 + call(G("__builtin__", "open"), S(m), S("w")) + b"0" + EMPTY_SD
                                            + b".", "builtins.open"),
        "STACK_GLOBAL": (b"\x80\x04" + b"\x8c\x02os\x8c\x06system\x93" + b"0" + EMPTY_SD + b".", "os.system"),
        "INST": (P2 + b"(" + S(f"touch {m}") + b"ios\nsystem\n0" + EMPTY_SD + b".", "os.system"),
        "OBJ": (P2 + b"(" + G("os", "system") + S(f"touch {m}") + b"o0" + EMPTY_SD + b".", "os.system"),
        "NEWOBJ on a non-allowlisted class": (P2 + G("subprocess", "Popen") + b"(" + S("touch") + S(m) + b"l\x85\x81"
                                              + b"0" + EMPTY_SD + b".", "subprocess.Popen"),
        "NEWOBJ_EX": (b"\x80\x04" + G("subprocess", "Popen") + b")}\x92" + b"0" + EMPTY_SD + b".",
                      "subprocess.Popen"),
        "tensor subclass": (P2 + G("torch._tensor", "_rebuild_from_type_v2") + b"("
                            + G("torch._utils", "_rebuild_tensor_v2") + G("evil", "Tensor") + b")N" + b"tR0"
                            + EMPTY_SD + b".", "evil.Tensor"),
    }


@pytest.mark.parametrize("name", list(crafted(pathlib.Path("x"))))
def test_non_allowlisted_globals_are_refused_wherever_they_go(tmp_path, marker, name):
    pkl, classpath = crafted(marker)[name]
    path = torch_zip(tmp_path / "evil.ckpt", pkl)
    with pytest.raises(UnsafeCheckpointError) as err:
        read_checkpoint(path)
    assert err.value.classpath == classpath and err.value.keypath.startswith("byte ")
    assert "nothing from it was executed" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("opcode", [b"\x82\x01", b"\x83\x01\x00", b"\x84\x01\x00\x00\x00"],
                         ids=["EXT1", "EXT2", "EXT4"])
def test_copyreg_extension_codes_are_refused(tmp_path, marker, opcode):
    """EXT opcodes resolve through copyreg's process-wide cache, not find_class: refused before loading."""
    import copyreg

    copyreg.add_extension("os", "system", 1)  # as if some library had registered it
    try:
        path = torch_zip(tmp_path / "ext.ckpt", P2 + opcode + b"0" + EMPTY_SD + b".")
        with pytest.raises(UnsafeCheckpointError, match="copyreg extension code"):
            read_checkpoint(path)
    finally:
        copyreg.remove_extension("os", "system", 1)


def test_stubs_stay_inert(tmp_path):
    """A stub of an allowlisted module class records REDUCE arguments and BUILD state; calling a stub
    instance (REDUCE on it) or BUILD with a __setstate__ key changes nothing and runs nothing."""
    module = G("torch.nn.modules.linear", "Linear")
    root = module + b"(" + S("a") + S("b") + b"tR}(" + S("__setstate__") + S("x") + S("__dict__") + b"}ub"
    path = torch_zip(tmp_path / "mod.pt", P2 + root + b".")
    raw = read_checkpoint(path)
    assert raw.kind == "pickled_module" and raw.module_classpath == "torch.nn.modules.linear.Linear"
    stub = records.stub_class("torch.nn.modules.linear.Linear", "module")
    assert stub.__setstate__ is safe_unpickle.Stub.__setstate__  # BUILD state is data, never methods
    with pytest.raises(UnsafeCheckpointError, match="collections.OrderedDict"):  # a converter as a value
        read_checkpoint(torch_zip(tmp_path / "conv.pt", P2 + module + b")R}" + S("f") + G("collections", "OrderedDict")
                                  + b"sb."))
    calls_stub = P2 + call(module) + b"(tR" + b"."  # Linear()() : REDUCE on a stub instance
    with pytest.raises(InputError, match="corrupted pickle"):
        read_checkpoint(torch_zip(tmp_path / "call.pt", calls_stub))


def test_module_stub_classes_are_an_explicit_bounded_list():
    """Only reviewed class paths mint stub classes (no prefix match), and the cache is bounded."""
    import legacy

    for classpath in legacy.all_class_paths():
        assert safe_unpickle.classify(*classpath.rsplit(".", 1)) == "module", classpath
    for classpath in ("athelas.models.lightning.evil.Payload", "torch.nn.modules.module._IncompatibleKeys",
                      "torch.nn.modules.linear.NotALayer"):
        assert safe_unpickle.classify(*classpath.rsplit(".", 1)) == "refused", classpath
    assert records.stub_class.cache_info().maxsize is not None
    for i in range(300):  # attacker-chosen numpy dtype class names: the cache does not grow past its bound
        safe_unpickle.resolve_global("numpy.dtypes", f"X{i}DType")
    assert records.stub_class.cache_info().currsize <= records.stub_class.cache_info().maxsize


def test_deep_mark_nesting_and_memo_bounds_are_refused(tmp_path, monkeypatch):
    many = P2 + b"}" + b"(N\x94Nu" * (2 * safe_unpickle.MAX_DEPTH) + b"0" + EMPTY_SD + b"."  # closed MARKs: fine
    assert read_checkpoint(torch_zip(tmp_path / "many.ckpt", many)).kind == "lightning"
    deep = P2 + b"(" * (safe_unpickle.MAX_DEPTH + 1) + b"."
    with pytest.raises(InputError, match="nests deeper"):
        read_checkpoint(torch_zip(tmp_path / "deep.ckpt", deep))
    monkeypatch.setattr(limits, "MAX_MEMO", 3)
    memo = P2 + b"N\x94" * 4 + b"0" * 4 + EMPTY_SD + b"."
    with pytest.raises(InputError, match="memo entries"):
        read_checkpoint(torch_zip(tmp_path / "memo.ckpt", memo))


# --- every API entry point, with the environment asking torch for unrestricted loads ---------------


def _v2_with_hidden_call(tmp_path: pathlib.Path, marker: pathlib.Path) -> pathlib.Path:
    """A genuine v2 checkpoint whose pickle opens with `open(marker, 'w')`, its result popped: what
    `torch.load(weights_only=False)` would run and a graph-only check would miss."""
    good = tmp_path / "good.ckpt"
    api.migrate(FIXTURES / V1["file"], good, overrides=V1["overrides"])
    with zipfile.ZipFile(good) as zf:
        members = [(i.filename, zf.read(i.filename)) for i in zf.infolist()]
    payload = call(G("builtins", "open"), S(str(marker)), S("w")) + b"0"
    evil = tmp_path / "evil.ckpt"
    with open(evil, "wb") as fh:
        write_members(fh, [Member(n, d[:2] + payload + d[2:] if n.endswith("/data.pkl") else d) for n, d in members])
    return evil


@pytest.fixture
def no_unrestricted_torch_load(monkeypatch):
    """torch.load fails unless weights_only=True; the environment forces unrestricted loads."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    real = torch.load

    def guarded(*args, **kwargs):
        if kwargs.get("weights_only") is not True:
            raise AssertionError(f"torch.load called without weights_only=True: {args!r:.200}")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", guarded)


def _entry_points():
    from athelas_migrate.export import export_onnx
    from athelas_migrate.models import BimodalCNN
    from athelas_migrate.predict import load_any_model

    return {
        "load_model": lambda p, out: api.load_model(p),
        "Model.load_from_checkpoint": lambda p, out: BimodalCNN.load_from_checkpoint(p),
        "Model.load_from_checkpoint (file object)": lambda p, out: BimodalCNN.load_from_checkpoint(open(p, "rb")),
        "verify": lambda p, out: api.verify(FIXTURES / V1["file"], p, overrides=V1["overrides"]),
        "export": lambda p, out: export_onnx(str(p), str(out / "m.onnx")),
        "predict (load_any_model)": lambda p, out: load_any_model(p),
        "migrate": lambda p, out: api.migrate(p, out / "x.ckpt"),
    }


ENTRY_POINTS = ["load_model", "Model.load_from_checkpoint", "Model.load_from_checkpoint (file object)", "verify",
                "export", "predict (load_any_model)", "migrate"]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_api_entry_points_refuse_a_hidden_call(tmp_path, marker, no_unrestricted_torch_load, entry):
    evil = _v2_with_hidden_call(tmp_path, marker)
    with pytest.raises(UnsafeCheckpointError) as err:
        _entry_points()[entry](evil, tmp_path)
    assert err.value.classpath == "builtins.open"


def test_api_entry_points_load_good_files_without_unrestricted_torch_load(tmp_path, no_unrestricted_torch_load):
    """The same entry points on genuine files (v2 and legacy) work with torch.load guarded."""
    from athelas_migrate.models import BimodalCNN

    good = tmp_path / "good.ckpt"
    api.migrate(FIXTURES / V1["file"], good, overrides=V1["overrides"])
    model = BimodalCNN.load_from_checkpoint(good, map_location="cpu")
    ref = api.load_model(good)
    for (k, a), (_, b) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), k  # bytes copied from the same file
    with pytest.warns(DeprecationWarning):
        legacy = BimodalCNN.load_from_checkpoint(FIXTURES / V1["file"], overrides=V1["overrides"])
    assert all(torch.equal(a, b) for a, b in zip(legacy.state_dict().values(), ref.state_dict().values()))


def test_no_unrestricted_load_in_the_package():
    """Statically: every torch.load call passes weights_only=True; pickle's loaders appear only in the
    restricted reader."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
            if owner == "torch" and node.func.attr == "load":
                kw = {k.arg: k.value for k in node.keywords}
                if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                    offenders.append(f"{path}:{node.lineno}")
            if owner == "pickle" and node.func.attr in ("load", "loads") and path.name != "safe_unpickle.py":
                offenders.append(f"{path}:{node.lineno}")
    assert not offenders


# --- the legacy (pre-zip) format -------------------------------------------------------------------


@pytest.fixture(scope="module")
def legacy_pair(tmp_path_factory):
    out = tmp_path_factory.mktemp("legacy")
    ckpt = torch.load(FIXTURES / V1["file"], weights_only=True)
    old = out / "old_format.ckpt"
    torch.save(ckpt, old, _use_new_zipfile_serialization=False)
    assert old.read_bytes()[:2] == b"\x80\x02" and not zipfile.is_zipfile(old)
    return out, old


def _sets(overrides: dict) -> list[str]:
    return [a for k, v in overrides.items() for a in ("--set", f"{k}={json.dumps(v)}")]


def test_legacy_format_migrates_by_copy_like_the_zip_fixture(legacy_pair, tmp_path, cli):
    _, old = legacy_pair
    raw = read_checkpoint(old)
    assert raw.format == "legacy" and raw.kind == "lightning"
    zipped = read_checkpoint(FIXTURES / V1["file"])
    for key, ref in raw.state_dict.items():  # lazy references into the file, like the zip reader's
        assert ref.storage.path == str(old) and ref.storage.data is None
        assert bytes(ref.raw_bytes()) == bytes(zipped.state_dict[key].raw_bytes()), key
    for src, dst in ((old, tmp_path / "from_legacy.ckpt"), (FIXTURES / V1["file"], tmp_path / "from_zip.ckpt")):
        code, _, stderr = cli("ckpt", src, dst, *_sets(V1["overrides"]))
        assert code == 0, stderr
    a = torch.load(tmp_path / "from_legacy.ckpt", weights_only=True)
    b = torch.load(tmp_path / "from_zip.ckpt", weights_only=True)
    assert list(a["state_dict"]) == list(b["state_dict"])
    for key in a["state_dict"]:
        x, y = a["state_dict"][key], b["state_dict"][key]
        assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x.view(-1).view(torch.uint8),
                                                                          y.view(-1).view(torch.uint8)), key
    assert a["hyper_parameters"] == b["hyper_parameters"]


def test_legacy_format_hidden_call_is_refused(tmp_path, marker):
    pkl = P2 + call(G("os", "system"), S(f"touch {marker}")) + b"0" + EMPTY_SD + b"."
    data = bytearray()
    for value in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True, "protocol_version": 1001}):
        import pickle

        data += pickle.dumps(value, protocol=2)
    data += pkl + pickle.dumps([], protocol=2)
    path = tmp_path / "evil_legacy.pt"
    path.write_bytes(bytes(data))
    with pytest.raises(UnsafeCheckpointError, match="os.system"):
        read_checkpoint(path)


@pytest.mark.parametrize("damage", ["truncated 60%", "truncated by one byte", "one extra byte",
                                    "storage count changed", "magic number changed", "pickle cut"])
def test_corrupted_legacy_format_files_exit_3(legacy_pair, tmp_path, cli, damage):
    _, old = legacy_pair
    data = bytearray(old.read_bytes())
    if damage == "truncated 60%":
        data = data[: len(data) * 6 // 10]
    elif damage == "truncated by one byte":
        data = data[:-1]
    elif damage == "one extra byte":
        data += b"\0"
    elif damage == "storage count changed":
        raw = read_checkpoint(old)
        first = min(t.storage.offset for t in raw.state_dict.values())
        data[first - 8] ^= 1
    elif damage == "magic number changed":
        data[5] ^= 0xFF
    else:
        data = data[:200]
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(bytes(data))
    code, _, stderr = cli("ckpt", bad, tmp_path / "out.ckpt", *_sets(V1["overrides"]))
    assert code == 3 and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert not (tmp_path / "out.ckpt").exists()


def test_tar_format_is_refused_clearly(tmp_path, cli):
    import tarfile

    path = tmp_path / "ancient.pt"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("sys_info")
        tar.addfile(info)
    code, _, stderr = cli("inspect", path)
    assert code == 3 and "tar-based torch format" in stderr


@pytest.mark.parametrize("protocol", [0, 1])
def test_protocol_0_and_1_reconstructor_bases_are_names_not_callables(tmp_path, protocol):
    """`copyreg._reconstructor(AttributeDict, dict, state)` reads; `builtins.dict` itself is only a name."""
    import pickle

    from lightning.fabric.utilities.data import AttributeDict

    pkl = pickle.dumps({"state_dict": {}, "hyper_parameters": AttributeDict(lr=0.1, n=[1, 2])}, protocol=protocol)
    assert read_checkpoint(torch_zip(tmp_path / "p.ckpt", pkl)).hyper_parameters == {"lr": 0.1, "n": [1, 2]}
    with pytest.raises(UnsafeCheckpointError, match="builtins.dict"):
        read_checkpoint(torch_zip(tmp_path / "v.ckpt", P2 + b"}(" + S("state_dict") + b"}" + S("x")
                                  + G("__builtin__", "dict") + b"u."))
    called = P2 + call(G("__builtin__", "dict"), b"") + b"0" + EMPTY_SD + b"."
    with pytest.raises(InputError, match="corrupted pickle"):
        read_checkpoint(torch_zip(tmp_path / "c.ckpt", called))


def test_legacy_format_pickled_module_reads_through_stubs(tmp_path):
    """A whole module saved in the pre-zip format names its classes as ('module', cls, file, source)
    persistent ids: accepted only for allowlisted module classes, which stay inert stubs."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU())
    path = tmp_path / "module.pt"
    torch.save(model, path, _use_new_zipfile_serialization=False)
    raw = read_checkpoint(path)
    assert raw.kind == "pickled_module" and raw.format == "legacy"
    assert raw.module_classes == {"": "torch.nn.modules.container.Sequential", "0": "torch.nn.modules.linear.Linear",
                                  "1": "torch.nn.modules.activation.ReLU"}
    assert torch.equal(raw.state_dict["0.weight"].to_torch(), model[0].weight.detach())
