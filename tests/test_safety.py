"""Untrusted checkpoints: nothing pickled ever runs, refusals name the class and the key path, the
reviewed allowlist converts to plain values, whole pickled legacy modules migrate through inert
stubs, and writes are atomic even under SIGKILL. See docs/safety.md."""

from __future__ import annotations

import argparse
import builtins
import contextlib
import os
import pathlib
import pickle
import pickletools
import struct
import subprocess
import sys
import types
import zipfile

import numpy as np
import pytest
import torch
from conftest import FIXTURES, P2, ROOT, G, S, manifest_entries

from athelas_migrate import api
from athelas_migrate.errors import AthelasError, InputError, UnsafeCheckpointError
from athelas_migrate.io import safe_unpickle
from athelas_migrate.io.reader import read_checkpoint
from athelas_migrate.io.writer import write_torch_zip
from athelas_migrate.io.zip_archive import Member, write_members

BY_FILE = {e["file"]: e for e in manifest_entries()}
V1 = BY_FILE["bimodal_cnn_v1.ckpt"]


def _leftovers(directory) -> list[str]:
    return sorted(p for p in os.listdir(directory) if p.endswith(".partial"))


# --- crafting files ---------------------------------------------------------------------------------


def rewrite_pickle(src, dst, edit) -> None:
    """Copy the torch zip `src` to `dst` with `edit(data_pkl_bytes)` as its pickle (CRCs recomputed)."""
    with zipfile.ZipFile(src) as zf:
        members = [(i.filename, zf.read(i.filename)) for i in zf.infolist()]
    with open(dst, "wb") as fh:
        write_members(fh, [Member(n, edit(d) if n.endswith("/data.pkl") else d) for n, d in members])


def torch_zip(path, pkl: bytes, records=(("0", b"\0" * 16),)) -> None:
    """A torch-style zip holding `pkl` as archive/data.pkl and the given storage records."""
    members = [Member("archive/data.pkl", pkl), Member("archive/byteorder", b"little")]
    members += [Member(f"archive/data/{k}", v) for k, v in records]
    with open(path, "wb") as fh:
        write_members(fh, members)


class Payload:
    """Pickles as `func(*args)`: what a malicious checkpoint author writes."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _attacks(sentinel: str):
    return {
        "os.system": (os.system, (f"touch {sentinel}",)),  # pickles as posix.system; rewritten to os.system below
        "posix.system": (os.system, (f"touch {sentinel}",)),
        "subprocess.Popen": (subprocess.Popen, (["touch", sentinel],)),
        "builtins.eval": (builtins.eval, (f"open({sentinel!r}, 'w')",)),
        "builtins.exec": (builtins.exec, (f"open({sentinel!r}, 'w').close()",)),
    }


def _malicious_checkpoint(tmp_path, classpath: str, where: str):
    sentinel = str(tmp_path / "pwned")
    ckpt = torch.load(FIXTURES / V1["file"], weights_only=True)
    payload = Payload(*_attacks(sentinel)[classpath])
    if where == "hyper_parameters":
        ckpt["hyper_parameters"]["note"] = {"nested": [payload]}
        keypath = "byte "  # refused at the opcode that names the global, before any key path exists
    else:  # a fake tensor in the state dict
        ckpt["state_dict"]["final_merge_network.1.bias"] = payload
        keypath = "byte "
    path = tmp_path / f"evil-{classpath}-{where}.ckpt"
    torch.save(ckpt, path)
    if classpath == "os.system":
        rewrite_pickle(path, path, lambda d: d.replace(b"cposix\nsystem\n", b"cos\nsystem\n"))
    return path, keypath, pathlib.Path(sentinel)


# --- 1. malicious pickles are refused, naming class and key path; nothing runs ----------------------


@pytest.mark.parametrize("where", ["hyper_parameters", "fake_tensor"])
@pytest.mark.parametrize("classpath", list(_attacks("x")))
def test_code_execution_payloads_are_refused_and_never_run(tmp_path, cli, classpath, where, spawn_audit):
    path, keypath, sentinel = _malicious_checkpoint(tmp_path, classpath, where)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    dst = tmp_path / "out.ckpt"
    with pytest.raises(UnsafeCheckpointError) as err:
        api.migrate(path, dst, overrides=V1["overrides"])
    assert err.value.classpath == classpath and err.value.keypath.startswith(keypath)
    assert err.value.exit_code == 3
    code, out, stderr = cli("ckpt", path, dst)
    assert code == 3
    assert stderr.count("\n") == 1 and stderr.startswith("error: ") and "Traceback" not in stderr
    assert f"'{classpath}' at {keypath}" in stderr and "nothing from it was executed" in stderr
    assert cli("inspect", path)[0] == 3
    assert spawn_audit == []  # nothing was started, so no `touch` can land later
    assert not sentinel.exists() and not dst.exists() and not _leftovers(tmp_path)


def test_the_payload_is_live_when_loaded_unsafely(tmp_path, spawn_audit):
    """The same file really runs its command under a full unpickler, and the audit hook sees it: the refusals
    above are not vacuous."""
    path, _, sentinel = _malicious_checkpoint(tmp_path, "posix.system", "hyper_parameters")
    torch.load(path, weights_only=False)
    assert sentinel.exists() and [e for e, _ in spawn_audit] == ["os.system"]


PID = b"(" + S("storage") + G("torch", "FloatStorage") + S("0") + S("cpu") + b"K\x04tQ"  # 4 floats, record 0


def TENSOR(pid=PID, offset=b"K\x00", shape=b"K\x04\x85", stride=b"K\x01\x85", hooks=b")R"):
    return (G("torch._utils", "_rebuild_tensor_v2") + b"(" + pid + offset + shape + stride + b"\x89"
            + G("collections", "OrderedDict") + hooks + b"tR")


def SD(*items: bytes) -> bytes:  # {"state_dict": {items}}
    return P2 + b"}" + S("state_dict") + b"}(" + b"".join(items) + b"us."


def _laughs(levels: int) -> bytes:
    """{"x": L[levels-1]} where L[i] = [L[i-1], L[i-1]]: 2**levels paths through `levels` objects."""
    out = P2 + b"}" + S("x") + b"]q\x00" + S("ha") + b"a"
    for i in range(1, levels):
        out += b"0](h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"eq" + bytes([i])
    return out + b"s."


CRAFTED = {
    # BUILD on what find_class / persistent_load hand out: converters, storages, tensors, stub classes
    "BUILD patches a converter": (P2 + G("collections", "OrderedDict") + b"}" + S("__defaults__") + b"Nsb.",
                                  InputError, "tries to modify an internal object"),
    "BUILD re-points a storage at /etc/passwd": (P2 + PID + b"}" + S("path") + S("/etc/passwd") + b"sb.",
                                                  InputError, "corrupted pickle"),
    "BUILD resizes a tensor": (SD(S("w"), TENSOR() + b"}" + S("shape") + b"K\x40\x85sb"), InputError,
                               "corrupted pickle"),
    "BUILD on a refused class": (P2 + G("os", "system") + b"}b.", UnsafeCheckpointError, "'os.system' at byte"),
    # opcodes that call: INST, OBJ, REDUCE through copyreg, a class stored as a value
    "INST os.system": (b"(" + S("touch /tmp/x") + b"ios\nsystem\n.", UnsafeCheckpointError, "'os.system' at byte"),
    "OBJ builtins.eval": (b"(" + G("builtins", "eval") + S("1+1") + b"o.", UnsafeCheckpointError, "'builtins.eval'"),
    "copyreg._reconstructor(os.system)": (P2 + G("copyreg", "_reconstructor") + b"(" + G("os", "system")
                                          + G("builtins", "object") + b"NtR.", UnsafeCheckpointError, "'os.system'"),
    "a refused class as a value": (SD(S("w"), G("subprocess", "Popen")), UnsafeCheckpointError,
                                   "'subprocess.Popen' at byte"),
    "SETITEM of a refused global into a Namespace": (
        P2 + b"}" + S("hyper_parameters") + G("argparse", "Namespace") + b")R}" + S("a") + G("posix", "system")
        + b"sbs.", UnsafeCheckpointError, "'posix.system' at byte"),
    "tensor subclass": (P2 + G("torch._tensor", "_rebuild_from_type_v2") + b"("
                        + G("torch._utils", "_rebuild_tensor_v2") + G("evil", "Tensor") + b"(" + PID
                        + b"K\x00K\x04\x85K\x01\x85\x89" + G("collections", "OrderedDict") + b")Rt}tR.",
                        UnsafeCheckpointError, "'evil.Tensor' at byte"),
    "a refused global in a tensor's backward hooks": (
        SD(S("w"), TENSOR(hooks=b")RK\x00" + G("os", "system") + b"s")), UnsafeCheckpointError,
        "'os.system' at byte"),
    "persistent id that is not a storage": (P2 + S("x") + b"Q.", InputError, "unexpected persistent id"),
    "storage record missing": (SD(S("w"), TENSOR(pid=PID.replace(S("0"), S("7")))), InputError,
                               "storage record '7' is missing"),
    "storage shorter than its tensor": (SD(S("w"), TENSOR(pid=PID.replace(b"K\x04t", b"K\x09t"))), InputError,
                                        "shorter than its tensor"),
    "storage declared twice differently": (SD(S("a"), TENSOR(), S("b"), TENSOR(pid=PID.replace(b"K\x04t", b"K\x02t"))),
                                           InputError, "declared twice"),
    "tensor view outside its storage": (SD(S("w"), TENSOR(offset=b"K\x02")), InputError, "lies outside its storage"),
    "negative storage offset": (SD(S("w"), TENSOR(offset=b"J\xff\xff\xff\xff")), InputError, "negative"),
    "negative stride": (SD(S("w"), TENSOR(stride=b"J\xff\xff\xff\xff\x85")), InputError, "negative"),
    "size and stride of different lengths": (SD(S("w"), TENSOR(shape=b"K\x02K\x02\x86")), InputError,
                                             "differ in length"),
    "65-dimensional tensor": (SD(S("w"), TENSOR(shape=b"(" + b"K\x01" * 65 + b"t", stride=b"(" + b"K\x01" * 65 + b"t")),
                              InputError, "at most 64"),
    "untyped storage of an unsupported dtype (uint16, _rebuild_tensor_v3)": (
        SD(S("w"), G("torch._utils", "_rebuild_tensor_v3") + b"(" + PID.replace(G("torch", "FloatStorage"),
           G("torch.storage", "UntypedStorage")) + b"K\x00K\x02\x85K\x01\x85\x89" + G("collections", "OrderedDict")
           + b")R" + G("torch", "uint16") + b"tR"), InputError, "unsupported tensor dtype torch.uint16"),
    # resource abuse: memo table, cycles, depth, expansion
    "memo index 0x7fffffff (16 GiB memo table)": (P2 + b"Nr\xff\xff\xff\x7f.", InputError, "memo index"),
    "text PUT with a huge memo index": (b"Np99999999999\n.", InputError, "memo index"),
    "reference cycle": (P2 + b"}" + S("state_dict") + b"]q\x00h\x00as.", InputError, "reference cycle"),
    "nesting 100000 levels deep": (P2 + b"]" * 100000 + b"a" * 99999 + b".", InputError, "nests deeper"),
    "bytearray(2**31) allocation": (P2 + G("builtins", "bytearray") + b"J\x00\x00\x00\x7f\x85R.", InputError,
                                    "unexpected bytearray arguments"),
    "a 100 KB path joined 20000 times": (P2 + G("pathlib", "PosixPath") + b"(" + S("a" * 100000) + b"q\x00"
                                         + b"h\x00" * 20000 + b"tR.", InputError, "expands far beyond"),
    "set() of a shared 50000-item list, 20000 times": (
        P2 + b"]q\x00(" + b"".join(b"J" + struct.pack("<i", i) for i in range(50000)) + b"e"
        + G("builtins", "set") + b"q\x01(" + b"h\x01h\x00\x85R" * 20000 + b"l.", InputError, "expands far beyond"),
    "unknown opcode": (P2 + b"\xff.", InputError, "corrupted pickle"),
    "pickle without STOP": (P2 + b"}", InputError, "corrupted pickle"),
    "numpy object array": (P2 + b"}" + S("hyper_parameters") + b"}" + S("a")
                           + G("numpy._core.multiarray", "_reconstruct") + b"(" + G("numpy", "ndarray")
                           + b"K\x00\x85C\x01btR(K\x01K\x01\x85" + G("numpy", "dtype") + S("O8")
                           + b"\x89\x88\x87R\x89]tbss.", UnsafeCheckpointError, "numpy.ndarray of Python objects"),
}


@pytest.mark.parametrize("name", list(CRAFTED))
def test_crafted_pickles_are_refused_quickly_with_one_line(tmp_path, name):
    pkl, exc_type, message = CRAFTED[name]
    path = tmp_path / "crafted.ckpt"
    torch_zip(path, pkl)
    with pytest.raises(exc_type) as err:
        read_checkpoint(path)
    text = str(err.value)
    assert message in text and "\n" not in text and len(text) < 700, text
    assert text.startswith(str(path))


_BOUNDED_READ = """
import resource, sys
resource.setrlimit(resource.RLIMIT_CPU, (20, 20))  # CPU seconds, not wall time: load on the machine cannot fail it
from athelas_migrate.errors import InputError
from athelas_migrate.io.reader import read_checkpoint
try:
    read_checkpoint(sys.argv[1])
except InputError as err:
    print(type(err).__name__, err)
"""


def test_shared_references_stay_linear(tmp_path):
    """60 levels of a list holding its predecessor twice: 2**60 paths, 60 objects. An exponential walk would
    exhaust the child's CPU-time limit (SIGXCPU) long before it finished; a linear one refuses at once."""
    path = tmp_path / "laughs.ckpt"
    torch_zip(path, _laughs(60))
    proc = subprocess.run([sys.executable, "-c", _BOUNDED_READ, str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "without 'state_dict'" in proc.stdout


@pytest.mark.parametrize("case", ["duplicate member", "compressed member", "header offset past the end",
                                  "overlapping members"])
def test_crafted_zip_archives(tmp_path, case):
    src = FIXTURES / "text_cnn_v1.ckpt"
    path = tmp_path / "crafted.ckpt"
    with zipfile.ZipFile(src) as zf:
        members = [(i.filename, zf.read(i.filename)) for i in zf.infolist()]
    if case == "compressed member":  # a zip bomb needs compression: refused before anything is inflated
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
            for name, data in members:
                out.writestr(name, data)
        match = "is compressed"
    elif case == "duplicate member":
        with open(path, "wb") as fh:
            write_members(fh, [Member(n, d) for n, d in members] + [Member(members[0][0], b"\x80\x02}.")])
        match = "appears twice"
    else:
        data = bytearray(src.read_bytes())
        first = data.find(b"PK\x01\x02")  # the central directory's first two entries
        second = data.find(b"PK\x01\x02", first + 4)
        if case == "header offset past the end":
            data[first + 42 : first + 46] = struct.pack("<I", 0xFFFFFF00)
            match = "inconsistent sizes or offsets"
        else:  # two directory entries share one local header: harmless, the names must still resolve
            data[second + 42 : second + 46] = data[first + 42 : first + 46]
            match = None
        path.write_bytes(bytes(data))
    if match is None:  # either refused as inconsistent, or read with every name resolving to the same tensors
        try:
            got = read_checkpoint(path)
        except InputError as err:
            assert str(err).startswith(str(path)), err
            return
        want = read_checkpoint(src)
        assert list(got.state_dict) == list(want.state_dict)
        for key, ref in want.state_dict.items():
            assert bytes(got.state_dict[key].raw_bytes()) == bytes(ref.raw_bytes()), key
        return
    with pytest.raises(InputError, match=match):
        read_checkpoint(path)


def test_corrupted_tensor_bytes_are_refused_not_laundered(tmp_path):
    """torch.load does not check record CRCs; the reader does before decoding or copying tensor bytes."""
    path = tmp_path / "bitrot.ckpt"
    data = bytearray((FIXTURES / V1["file"]).read_bytes())
    rec = read_checkpoint(FIXTURES / V1["file"]).state_dict["text_subnetwork.embeddings.weight"].storage
    data[rec.offset + 5] ^= 0x40
    path.write_bytes(bytes(data))
    torch.load(path, weights_only=True)  # torch itself loads the damaged file
    with pytest.raises(InputError, match="fails its CRC check"):
        api.migrate(path, tmp_path / "out.ckpt", overrides=V1["overrides"])
    assert not (tmp_path / "out.ckpt").exists()


# --- 1b. the allowlist converts to plain values: the output loads with weights_only=True -------------


def test_allowlisted_classes_become_plain_values(tmp_path):
    from lightning.fabric.utilities.data import AttributeDict

    ckpt = torch.load(FIXTURES / V1["file"], weights_only=True)
    hp = AttributeDict(ckpt["hyper_parameters"])
    hp.update(lr=np.float64(0.02), num_classes=np.int64(2), dropout_keep=np.float32(0.25),
              is_binary=np.bool_(True), data_dir=pathlib.Path("/data/run1"),
              args=argparse.Namespace(seed=np.int64(7), out=pathlib.PurePosixPath("out")),
              class_weights=np.array([1.0, 1.0]), device=torch.device("cpu"), dtype=torch.float32)
    ckpt["hyper_parameters"] = hp
    ckpt["callbacks"] = {"ModelCheckpoint": {"dirpath": pathlib.Path("/ckpts"), "best_model_score": np.float64(0.5)}}
    src, dst = tmp_path / "rich.ckpt", tmp_path / "plain.ckpt"
    torch.save(ckpt, src)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(src, weights_only=True)  # the input really holds those classes

    raw = read_checkpoint(src)
    assert raw.hyper_parameters["args"] == {"seed": 7, "out": "out"}
    assert type(raw.hyper_parameters["lr"]) is float and type(raw.hyper_parameters["num_classes"]) is int
    assert raw.hyper_parameters["data_dir"] == "/data/run1" and raw.hyper_parameters["class_weights"] == [1.0, 1.0]
    assert raw.hyper_parameters["device"] == "cpu" and raw.hyper_parameters["dtype"] == "torch.float32"
    assert type(raw.hyper_parameters) is dict and raw.hyper_parameters["is_binary"] is True

    api.migrate(src, dst, overrides=V1["overrides"])
    out = torch.load(dst, weights_only=True)  # plain values only
    config = out["hyper_parameters"]["config"]
    assert config["lr"] == 0.02 and type(config["lr"]) is float and config["dropout_keep"] == 0.25
    assert config["data_dir"] == "/data/run1" and config["args"] == {"seed": 7, "out": "out"}
    assert out["callbacks"]["ModelCheckpoint"] == {"dirpath": "/ckpts", "best_model_score": 0.5}
    reference = torch.load(FIXTURES / V1["file"], weights_only=True)["state_dict"]
    assert len(out["state_dict"]) == len(reference) - 2  # the two nested loss buffers are dropped


# --- 3. whole pickled legacy modules, under their historical class paths -------------------------------


@contextlib.contextmanager
def historical_classes():
    """Register every historical class path of `legacy.LEGACY_CLASS_PATHS` as a subclass with that
    `__module__`/`__qualname__`, so `torch.save(model)` writes what a field file holds; removed after."""
    import legacy

    added, classes = [], {}
    for classpath, base in legacy.LEGACY_CLASS_PATHS.items():
        module, name = classpath.rsplit(".", 1)
        parts = module.split(".")
        for i in range(1, len(parts) + 1):
            m = ".".join(parts[:i])
            if m not in sys.modules:
                sys.modules[m] = types.ModuleType(m)
                added.append(m)
        cls = type(name, (base,), {"__module__": module, "__qualname__": name})
        setattr(sys.modules[module], name, cls)
        classes[classpath] = cls
    try:
        yield classes
    finally:
        for m in added:
            sys.modules.pop(m, None)


PICKLED = [  # (fixture with the weights, historical root class, version it implies, era of nested classes)
    ("multimodal_cnn_v0.ckpt", "athelas.models.lightning.pl_multimodal_cnn.MultimodalCNN", "v0"),
    ("bimodal_cnn_v1.ckpt", "athelas.models.lightning.bimodal.pl_bimodal_cnn.BimodalCNN", "v1"),
    ("text_cnn_v1.ckpt", "athelas.models.lightning.pl_text_cnn.TextCNN", "v0"),
    ("text_cnn_v1.ckpt", "athelas.models.lightning.text.pl_text_cnn.TextCNN", "v1"),
    ("tab_ae_v1.ckpt", "athelas.models.lightning.pl_tab_ae.TabAE", "v0"),
    ("tab_ae_v1.ckpt", "athelas.models.lightning.tabular.pl_tab_ae.TabAE", "v1"),
]
NESTED = {"v0": {"text_subnetwork": "athelas.models.lightning.pl_text_cnn.TextCNN",
                 "tab_subnetwork": "athelas.models.lightning.pl_tab_ae.TabAE"},
          "v1": {"text_subnetwork": "athelas.models.lightning.text.pl_text_cnn.TextCNN",
                 "tab_subnetwork": "athelas.models.lightning.tabular.pl_tab_ae.TabAE"}}


def _legacy_model(entry: dict, cls: type):
    """The legacy model of a fixture, weights loaded, built as class `cls`."""
    raw = torch.load(FIXTURES / entry["file"], weights_only=True)
    state, hp = raw["state_dict"], raw["hyper_parameters"]
    if entry["family"] == "TabAE":
        model = cls({**hp, **entry["overrides"]})
    else:
        config = {**(hp["config"] if "config" in hp else hp), **entry["overrides"]}
        vocab, width = state["embeddings.weight" if entry["family"] == "TextCNN" else
                             "text_subnetwork.embeddings.weight"].shape
        model = cls(config, vocab, torch.zeros(vocab, width))
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def pickled_modules(tmp_path_factory):
    out = tmp_path_factory.mktemp("pickled")
    files = {}
    with historical_classes() as classes:
        for fixture, classpath, version in PICKLED:
            model = _legacy_model(BY_FILE[fixture], classes[classpath])
            for attr, nested in NESTED[version].items():
                if hasattr(model, attr) and isinstance(getattr(model, attr), torch.nn.Module):
                    getattr(model, attr).__class__ = classes[nested]
            path = out / f"{classpath.rsplit('.', 2)[-2]}.{version}.pt"
            torch.save(model, path)
            files[classpath] = path
        evil = _legacy_model(V1, classes[PICKLED[1][1]])
        for attr, nested in NESTED["v1"].items():
            getattr(evil, attr).__class__ = classes[nested]
        evil.text_subnetwork.callback = Payload(os.system, (f"touch {out / 'pwned'}",))
        torch.save(evil, out / "evil_nested.pt")
        del evil.text_subnetwork.callback
        evil.on_load = Payload(subprocess.Popen, (["touch", str(out / "pwned")],))
        torch.save(evil, out / "evil_root.pt")
    assert "athelas" not in sys.modules  # the historical modules are gone again: nothing can import them
    import legacy

    torch.save(_legacy_model(V1, legacy.BimodalCNN), out / "repo_legacy_class.pt")
    return out, files


def _globals(path) -> set[str]:
    with zipfile.ZipFile(path) as zf:
        pkl = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    return {arg.replace(" ", ".") for op, arg, _ in pickletools.genops(pkl) if op.name == "GLOBAL"}


def test_pickled_module_globals_are_all_allowlisted(pickled_modules):
    """The census behind the module allowlist (docs/safety.md): every global such a pickle names."""
    _, files = pickled_modules
    seen = set().union(*(_globals(p) for p in files.values()))
    kinds = {c: safe_unpickle.classify(*c.rsplit(".", 1)) for c in seen}
    assert not [c for c, k in kinds.items() if k == "refused"], kinds
    assert {c for c, k in kinds.items() if k == "module"} >= {"torch.nn.modules.linear.Linear",
                                                              "torch.nn.modules.sparse.Embedding"}
    assert "lightning.fabric.utilities.data.AttributeDict" in seen  # the module's _hparams


@pytest.mark.parametrize("fixture,classpath,version", PICKLED,
                         ids=[f"{c.rsplit('.', 1)[1]}-{v}" for _, c, v in PICKLED])
def test_pickled_legacy_module_migrates_through_stubs(pickled_modules, tmp_path, fixture, classpath, version):
    _, files = pickled_modules
    entry = BY_FILE[fixture]
    path = files[classpath]
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # a whole pickled object graph, not a weights file
    raw = read_checkpoint(path)
    assert "athelas" not in sys.modules  # read without importing (let alone running) the historical classes
    assert raw.kind == "pickled_module" and raw.module_classpath == classpath
    result = api.migrate(path, tmp_path / "from_pickle.ckpt", overrides=entry["overrides"])
    assert (result.family.name, result.source_version) == (entry["family"], version)
    assert f"pickled class {classpath}" in result.detection.evidence
    reference = api.migrate(FIXTURES / fixture, tmp_path / "from_lightning.ckpt", overrides=entry["overrides"])
    ours = torch.load(tmp_path / "from_pickle.ckpt", weights_only=True)["state_dict"]
    theirs = torch.load(tmp_path / "from_lightning.ckpt", weights_only=True)["state_dict"]
    assert list(ours) == list(theirs) == list(reference.state)
    assert all(torch.equal(ours[k], theirs[k]) and ours[k].dtype == theirs[k].dtype for k in ours)
    model = api.load_model(tmp_path / "from_pickle.ckpt")
    io_ = torch.load(FIXTURES / entry["io"], weights_only=True)
    with torch.no_grad():
        assert torch.allclose(model(io_["inputs"]), io_["outputs"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name,classpath,keypath", [
    ("evil_root.pt", "subprocess.Popen", "byte "),
    ("evil_nested.pt", "posix.system", "byte "),
    ("repo_legacy_class.pt", "legacy.bimodal_cnn.BimodalCNN", "byte "),
])
def test_foreign_objects_inside_pickled_modules_are_refused(pickled_modules, tmp_path, cli, name, classpath, keypath):
    out, _ = pickled_modules
    with pytest.raises(UnsafeCheckpointError) as err:
        api.migrate(out / name, tmp_path / "x.ckpt", overrides=V1["overrides"])
    assert err.value.classpath == classpath and err.value.keypath.startswith(keypath)
    code, _, stderr = cli("ckpt", out / name, tmp_path / "x.ckpt")
    assert code == 3 and f"'{classpath}' at {keypath}" in stderr
    assert not (out / "pwned").exists() and not (tmp_path / "x.ckpt").exists()


# --- 5. atomic writes: see tests/test_write_safety.py (signals, SIGKILL, ENOSPC, exit code 4) -------------


def test_failed_write_leaves_nothing(tmp_path):
    from athelas_migrate.io.tensor_ref import StorageRef, TensorRef

    dst = tmp_path / "out.ckpt"
    dst.write_bytes(b"old")
    gone = StorageRef("float32", 4, path=str(tmp_path / "vanished.ckpt"), offset=0, crc32=0)
    with pytest.raises(InputError, match="vanished.ckpt: cannot read the source"):  # gone since it was read
        write_torch_zip(str(dst), {"state_dict": {"w": TensorRef(gone, 0, (4,), (1,))}})
    assert dst.read_bytes() == b"old" and not _leftovers(tmp_path)


def test_errors_are_athelas_errors_with_exit_code_3():
    assert issubclass(UnsafeCheckpointError, InputError) and issubclass(InputError, AthelasError)
    assert UnsafeCheckpointError("a.b", "<root>").exit_code == 3


def test_read_path_does_not_import_torch():
    code = ("import sys; from athelas_migrate.io.reader import read_checkpoint; "
            f"read_checkpoint({str(FIXTURES / V1['file'])!r}); "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0

