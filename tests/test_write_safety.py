"""Issue 11, write side: nothing lost (no input deleted, no partial output under any ending) and nothing
unreadable published (every output loads with torch.load(weights_only=True)); output-side failures exit 4.

Both temp-file strategies of `io.writer` are exercised: the anonymous O_TMPFILE file (default on Linux) and
the named `.partial` fallback (forced by making O_TMPFILE fail with EOPNOTSUPP, as some file systems do).
Signals are sent to a real child process at a handshake point: the child announces that it is inside the
write and blocks reading its stdin, which the test never writes to.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from collections import OrderedDict

import pytest
import torch
from conftest import FIXTURES, ROOT, manifest_entries

from athelas_migrate.errors import InputError, OutputError
from athelas_migrate.io import pickle_writer, writer
from athelas_migrate.io.pickle_writer import INT_LIMIT, dumps
from athelas_migrate.io.reader import read_checkpoint
from athelas_migrate.io.tensor_ref import StorageRef, TensorRef
from athelas_migrate.io.writer import atomic_output, temp_name, write_safetensors, write_torch_zip

V1 = next(e for e in manifest_entries() if e["file"] == "bimodal_cnn_v1.ckpt")


@pytest.fixture(params=["anonymous", "named"])
def mode(request, monkeypatch):
    """Run the test with O_TMPFILE (anonymous) and with the named-temp fallback (O_TMPFILE -> EOPNOTSUPP)."""
    if request.param == "named":
        _no_tmpfile(monkeypatch)
    return request.param


def _no_tmpfile(monkeypatch):
    real = os.open

    def fake(path, flags, *args, **kw):
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
        return real(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", fake)


@pytest.fixture
def v1_args(tmp_path):
    """(OLD copy, ARGS after OLD NEW) for migrating the v1 fixture through the CLI."""
    cfg = tmp_path / "cfg" / "v1.json"
    cfg.parent.mkdir()
    cfg.write_text(json.dumps(V1["overrides"]))
    return ["--config", str(cfg)]


def _entries(directory) -> list[str]:
    return sorted(os.listdir(directory))


def _copy_v1(directory, name="old.ckpt"):
    dst = directory / name
    dst.write_bytes((FIXTURES / V1["file"]).read_bytes())
    return dst


# --- 1. only files the tool provably created are ever deleted ---------------------------------------------

def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:64] or "host"


def test_input_named_like_a_dead_writers_temp_file_survives_and_migrates(tmp_path, cli, v1_args):
    """The old clean-up unlinked `.NEW.<host>.<dead pid>.<hex>.partial` beside NEW, even when it was OLD."""
    old = _copy_v1(tmp_path, f".new.ckpt.{_host()}.999999999.0badc0de.partial")
    before = old.read_bytes()
    code, _, stderr = cli("ckpt", old, tmp_path / "new.ckpt", *v1_args)
    assert code == 0, stderr
    assert old.read_bytes() == before
    assert torch.load(tmp_path / "new.ckpt", weights_only=True)["state_dict"]


def test_other_processes_temp_files_are_never_removed(tmp_path, mode):
    names = [f".m.ckpt.{_host()}.999999999.00000000.partial", f".m.ckpt.{_host()}.1.00000000.partial",
             ".m.ckpt.0123456789abcdef0123456789abcdef.partial"]  # dead PID, live PID, the new pattern
    for n in names:
        (tmp_path / n).write_bytes(b"someone else's")
    write_torch_zip(str(tmp_path / "m.ckpt"), {"note": "x"})
    with pytest.raises(RuntimeError), atomic_output(str(tmp_path / "m.ckpt")) as fh:
        fh.write(b"partial")
        raise RuntimeError("fail")
    assert _entries(tmp_path) == sorted(names + ["m.ckpt"])
    assert all((tmp_path / n).read_bytes() == b"someone else's" for n in names)


def test_anonymous_temp_file_has_no_name_until_published(tmp_path):
    with atomic_output(str(tmp_path / "a.bin")) as fh:
        fh.write(b"x" * 100_000)
        fh.flush()
        assert _entries(tmp_path) == []  # nothing a crash could leave, nothing another process could take
    assert (tmp_path / "a.bin").read_bytes() == b"x" * 100_000 and _entries(tmp_path) == ["a.bin"]


def test_named_fallback_is_created_exclusively_and_removed_by_its_creator(tmp_path, monkeypatch):
    _no_tmpfile(monkeypatch)
    with pytest.raises(RuntimeError), atomic_output(str(tmp_path / "a.bin")) as fh:
        fh.write(b"x")
        (partial,) = _entries(tmp_path)
        assert re.fullmatch(r"\.a\.bin\.[0-9a-f]{32}\.partial", partial)
        raise RuntimeError("fail")
    assert _entries(tmp_path) == []


# --- 5. no partial file survives any ending -----------------------------------------------------------------

def _enospc(monkeypatch, tmp_path, after: int):
    """Every write into a file under tmp_path fails with ENOSPC once `after` bytes went there (buffered
    writes, os.write and copy_file_range alike); other files are untouched."""
    written = [0]

    def ours(fd: int) -> bool:
        return os.readlink(f"/proc/self/fd/{fd}").startswith(str(tmp_path))

    def full(n: int):
        if written[0] + n > after:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written[0] += n

    class Full(writer.io.FileIO):
        def write(self, data):
            full(len(data))
            return super().write(data)

    real_write, real_cfr = os.write, os.copy_file_range

    def write(fd, data):
        if ours(fd):
            full(len(data))
        return real_write(fd, data)

    def cfr(src, dst, count, *rest):
        if ours(dst):
            full(count)
        return real_cfr(src, dst, count, *rest)

    monkeypatch.setattr(writer._Pending, "_raw", staticmethod(lambda fd: Full(fd, "wb")))
    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "copy_file_range", cfr)


@pytest.mark.parametrize("after", [0, 100, 20_000])  # in the first header, mid-file, in the central directory
def test_enospc_exits_4_and_leaves_nothing(tmp_path, cli, v1_args, mode, monkeypatch, after):
    out = tmp_path / "out"
    out.mkdir()
    (out / "new.ckpt").write_bytes(b"previous")
    old = _copy_v1(tmp_path)
    _enospc(monkeypatch, out, after)
    code, _, stderr = cli("ckpt", old, out / "new.ckpt", *v1_args, "--force")
    assert code == 4, stderr
    assert f"{out / 'new.ckpt'}: cannot write the output: No space left on device" in stderr
    assert _entries(out) == ["new.ckpt"] and (out / "new.ckpt").read_bytes() == b"previous"


def test_enospc_in_buffered_close_still_removes_the_temp_file(tmp_path, monkeypatch):
    """The old clean-up called fh.close(), whose flush raised ENOSPC again, so the unlink never ran."""
    _no_tmpfile(monkeypatch)
    _enospc(monkeypatch, tmp_path, 10)
    with pytest.raises(OutputError, match="the body failed first"), atomic_output(str(tmp_path / "x.bin")) as fh:
        fh.write(b"y" * 5)  # buffered: fails only when flushed
        raise OutputError("the body failed first")
    assert _entries(tmp_path) == []


def test_failed_rename_exits_4_and_leaves_nothing(tmp_path, cli, v1_args, mode, monkeypatch):
    old = _copy_v1(tmp_path)

    def replace(*args, **kw):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(os, "replace", replace)
    code, _, stderr = cli("ckpt", old, tmp_path / "new.ckpt", *v1_args)
    assert code == 4 and "cannot write the output: Invalid cross-device link" in stderr
    assert _entries(tmp_path) == ["cfg", "old.ckpt"]  # also the random name the anonymous file was linked under


_CHILD = textwrap.dedent("""
    import os, signal, sys
    from athelas_migrate.io import writer
    mode, hup = sys.argv[1], sys.argv[2]
    if hup == "ignored":
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    if mode == "named":
        writer._anonymous_supported = lambda: False
    real = writer.write_members
    def gated(fh, members):  # called inside atomic_output, once the temporary file exists
        print("writing", flush=True)
        sys.stdin.read(1)  # the handshake: blocks until the test writes or signals
        return real(fh, members)
    writer.write_members = gated
    from athelas_migrate.cli import main
    main(sys.argv[3:], prog_name="athelas-migrate")
""")


def _child(tmp_path, v1_args, mode, hup="default"):
    old = _copy_v1(tmp_path)
    args = [sys.executable, "-c", _CHILD, mode, hup, "ckpt", str(old), str(tmp_path / "new.ckpt"), *v1_args]
    child = subprocess.Popen(args, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout.readline() == b"writing\n", child.communicate()
    return child


@pytest.mark.parametrize("mode_, sig", [("named", signal.SIGTERM), ("named", signal.SIGHUP),
                                        ("named", signal.SIGQUIT), ("named", signal.SIGINT),
                                        ("anonymous", signal.SIGTERM)])
def test_signal_mid_write_cleans_up_and_exits_128_plus_signum(tmp_path, v1_args, mode_, sig):
    child = _child(tmp_path, v1_args, mode_)
    try:
        visible = [n for n in _entries(tmp_path) if n.endswith(".partial")]
        assert len(visible) == (1 if mode_ == "named" else 0)  # the clean-up below is not vacuous
        child.send_signal(sig)
        _, stderr = child.communicate(timeout=60)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 128 + sig, stderr
    assert b"interrupted; no output was left behind" in stderr and b"Traceback" not in stderr
    assert _entries(tmp_path) == ["cfg", "old.ckpt"]


def test_an_ignored_signal_stays_ignored(tmp_path, v1_args):
    child = _child(tmp_path, v1_args, "named", hup="ignored")
    try:
        child.send_signal(signal.SIGHUP)
        _, stderr = child.communicate(b"go", timeout=60)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 0, stderr
    assert _entries(tmp_path) == ["cfg", "new.ckpt", "old.ckpt"]


@pytest.mark.parametrize("mode_", ["anonymous", "named"])
def test_sigkill_leaves_nothing_with_o_tmpfile_and_one_named_file_without(tmp_path, v1_args, mode_):
    """Documented in docs/safety.md: SIGKILL cannot be cleaned up after; only the fallback leaves a file."""
    child = _child(tmp_path, v1_args, mode_)
    child.kill()
    child.wait()
    left = [n for n in _entries(tmp_path) if n not in ("cfg", "old.ckpt")]
    if mode_ == "anonymous":
        assert left == []
    else:
        assert len(left) == 1 and re.fullmatch(r"\.new\.ckpt\.[0-9a-f]{32}\.partial", left[0])


# --- 9. output-side failures exit 4 -------------------------------------------------------------------------

@pytest.mark.parametrize("err", [errno.EROFS, errno.EACCES])
def test_unwritable_directory_exits_4(tmp_path, cli, v1_args, mode, monkeypatch, err):
    """Root ignores permissions, so a read-only directory is simulated where the output is created."""
    old = _copy_v1(tmp_path)
    real = os.open

    def fake(path, flags, *args, **kw):
        if flags & os.O_CREAT or flags & os.O_TMPFILE == os.O_TMPFILE:  # creating, not opening the directory
            raise OSError(err, os.strerror(err))
        return real(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", fake)
    code, _, stderr = cli("ckpt", old, tmp_path / "new.ckpt", *v1_args)
    assert code == 4, stderr
    assert f"{tmp_path / 'new.ckpt'}: cannot write the output: {os.strerror(err)}" in stderr
    assert _entries(tmp_path) == ["cfg", "old.ckpt"]


def test_long_output_name_is_written(tmp_path, cli, v1_args, mode):
    old = _copy_v1(tmp_path)
    new = tmp_path / ("n" * 245 + ".ckpt")  # 250 bytes: the old temp name (+ host, PID, token) exceeded 255
    code, _, stderr = cli("ckpt", old, new, *v1_args)
    assert code == 0, stderr
    assert _entries(tmp_path) == sorted(["cfg", "old.ckpt", new.name])


def test_too_long_output_name_exits_4(tmp_path, cli, v1_args, mode):
    old = _copy_v1(tmp_path)
    code, _, stderr = cli("ckpt", old, tmp_path / ("n" * 300 + ".ckpt"), *v1_args)
    assert code == 4 and "cannot write the output: File name too long" in stderr
    assert _entries(tmp_path) == ["cfg", "old.ckpt"]


@pytest.mark.parametrize("base", ["n" * 255, "é" * 127, "x.ckpt"])
def test_temp_names_fit_name_max(base):
    name = temp_name(f"/d/{base}")
    assert len(os.fsencode(name)) <= 255 and name.endswith(".partial") and name.startswith(".")


# --- 4/16. sources that change while copied; descriptors -----------------------------------------------------

def _big_source(path, n=(3 << 20) // 4):  # > one 1 MiB read: the truncation lands between two reads
    ref = StorageRef("float32", n, data=bytes(range(256)) * (n * 4 // 256))
    write_torch_zip(str(path), {"state_dict": OrderedDict(w=TensorRef(ref, 0, (n,), (1,)))})
    return path


_TRUNCATING_CHILD = textwrap.dedent("""
    import os, sys
    from athelas_migrate.errors import InputError
    from athelas_migrate.io import tensor_ref
    from athelas_migrate.io.reader import read_checkpoint
    from athelas_migrate.io.writer import write_torch_zip
    src, dst = sys.argv[1], sys.argv[2]
    raw = read_checkpoint(src)
    real, first = tensor_ref.crc32, [True]
    def crc32(data, value=0):  # the source shrinks while its record is being checked and copied
        if first[0]:
            first[0] = False
            os.truncate(src, 4096)
        return real(data, value)
    tensor_ref.crc32 = crc32
    try:
        write_torch_zip(dst, {"state_dict": raw.state_dict})
    except InputError as exc:
        sys.exit(f"refused: {exc}")
""")


def test_source_truncated_while_copied_is_refused_not_sigbus(tmp_path):
    src = _big_source(tmp_path / "src.ckpt")
    dst = tmp_path / "out" / "new.ckpt"
    dst.parent.mkdir()
    proc = subprocess.run([sys.executable, "-c", _TRUNCATING_CHILD, str(src), str(dst)], cwd=ROOT,
                          capture_output=True, timeout=120)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])  # not -SIGBUS
    assert b"refused:" in proc.stderr and b"bytes early" in proc.stderr
    assert _entries(dst.parent) == []


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_failed_copy_closes_every_source_descriptor(tmp_path, monkeypatch):
    src = _big_source(tmp_path / "src.ckpt", n=1 << 16)
    raw = read_checkpoint(str(src))
    for st in [raw.state_dict["w"].storage]:
        st.record = None  # skip the CRC check: the copy itself meets the short source
    os.truncate(src, 8192)
    before = _fds()
    for _ in range(3):
        with pytest.raises(InputError):
            write_torch_zip(str(tmp_path / "a.ckpt"), {"state_dict": raw.state_dict})
        with pytest.raises(InputError):
            write_safetensors(str(tmp_path / "a.safetensors"), dict(raw.state_dict), {})
    assert _fds() == before
    assert _entries(tmp_path) == ["src.ckpt"]


def test_batch_verbatim_copy_of_a_shrinking_source_is_an_error(tmp_path, monkeypatch):
    """The old loop stopped at the early end and published the truncated copy."""
    from athelas_migrate.batch_worker import copy_verbatim

    src = _big_source(tmp_path / "src.ckpt", n=1 << 16)
    real = os.copy_file_range

    def shrink_first(s, d, count, *rest):
        os.truncate(src, 1000)
        return real(s, d, count, *rest)

    monkeypatch.setattr(os, "copy_file_range", shrink_first)
    with pytest.raises(InputError, match="bytes early"):
        copy_verbatim(str(src), str(tmp_path / "copy.ckpt"), force=False)
    assert _entries(tmp_path) == ["src.ckpt"]


# --- 8. every written file loads with torch.load(weights_only=True) ------------------------------------------

def _loads(path) -> bool:
    torch.load(path, weights_only=True)
    return True


@pytest.mark.parametrize("value", [INT_LIMIT - 1, -(INT_LIMIT - 1), 10**613 - 1, 2**64, -(2**63)],
                         ids=["limit-1", "-(limit-1)", "613-digits", "2**64", "-2**63"])
def test_largest_writable_ints_load(tmp_path, value):
    write_torch_zip(str(tmp_path / "a.ckpt"), {"hyper_parameters": {"n": value}})
    assert torch.load(tmp_path / "a.ckpt", weights_only=True)["hyper_parameters"]["n"] == value


@pytest.mark.parametrize("value, digits", [(INT_LIMIT, 614), (-INT_LIMIT, 614), (10**5000, 5001)],
                         ids=["limit", "-limit", "5001-digits"])
def test_ints_torch_cannot_read_are_refused(tmp_path, value, digits):
    with pytest.raises(InputError, match=rf"<root>\['hyper_parameters'\]\['n'\]: an integer of {digits} digits"):
        write_torch_zip(str(tmp_path / "a.ckpt"), {"hyper_parameters": {"n": value}})
    assert _entries(tmp_path) == []


_S4 = StorageRef("float32", 4, data=bytes(16))
_S0 = StorageRef("float32", 0, data=b"")


@pytest.mark.parametrize("t", [TensorRef(_S0, 0, (0, 2**62), (1, 1)), TensorRef(_S4, 4, (0,), (1,)),
                               TensorRef(_S4, 0, (0,), (2**62,)), TensorRef(_S4, 3, (1,), (1,)),
                               TensorRef(_S4, 0, (2, 2), (0, 1))],
                         ids=["zero-el-2**62", "offset-at-end", "zero-el-huge-stride", "last-element", "stride-0"])
def test_edge_views_torch_reads_are_written(tmp_path, t):
    write_torch_zip(str(tmp_path / "a.ckpt"), {"t": t})
    assert tuple(torch.load(tmp_path / "a.ckpt", weights_only=True)["t"].shape) == t.shape


@pytest.mark.parametrize("t", [TensorRef(_S0, 0, (0, 10**30), (1, 1)), TensorRef(_S0, 10**30, (0,), (1,)),
                               TensorRef(_S4, 0, (0,), (10**30,)), TensorRef(_S4, 5, (0,), (1,)),
                               TensorRef(_S4, 1, (4,), (1,)), TensorRef(_S4, 3, (4,), (-1,)),
                               TensorRef(_S4, 0, (2**62, 2**2), (0, 0)), TensorRef(_S4, 0, (2,), (1, 1))],
                         ids=["zero-el-1e30-size", "zero-el-1e30-offset", "zero-el-1e30-stride", "zero-el-past-end",
                              "past-end", "negative-stride", "numel-overflow", "rank-mismatch"])
def test_views_torch_cannot_read_are_refused(tmp_path, t):
    with pytest.raises(InputError, match=r"<root>\['t'\]: tensor cannot be written"):
        write_torch_zip(str(tmp_path / "a.ckpt"), {"t": t})
    assert _entries(tmp_path) == []


# --- pickle writer: no stand-in modules, same bytes -----------------------------------------------------------

_NO_TORCH_CHILD = textwrap.dedent("""
    import sys
    from collections import OrderedDict
    from athelas_migrate.io.pickle_writer import dumps
    from athelas_migrate.io.tensor_ref import StorageRef, TensorRef
    seen = []
    class Probe:  # pickled in the middle of the dump, after the first tensor: what would another thread see?
        def __reduce__(self):
            seen.append(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
            return (int, (0,))
    t = TensorRef(StorageRef("float32", 1, data=bytes(4)), 0, (1,), (1,))
    dumps(OrderedDict(a=t, probe=Probe(), b=t))
    print(seen, "torch" in sys.modules)
""")


def test_dump_never_puts_stand_in_torch_modules_into_sys_modules():
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH_CHILD], cwd=ROOT, capture_output=True, timeout=120)
    assert proc.stdout.decode().split() == ["[[]]", "False"], proc.stderr


@pytest.mark.parametrize("name", ["bimodal_cnn_v1.ckpt", "fusion_gate_v1.ckpt"])
def test_fast_and_fallback_picklers_write_the_same_bytes(name):
    obj = read_checkpoint(str(FIXTURES / name)).top
    fast, _ = dumps(obj)
    buf = pickle_writer.io.BytesIO()
    pickle_writer._PyTorchPickler(buf).dump(obj)
    assert fast == buf.getvalue() and b"athelas_migrate" not in fast


def test_data_containing_a_placeholder_opcode_is_written_exactly(tmp_path):
    trap = pickle_writer._REBUILD_TENSOR.opcode(placeholder=True).decode()
    t = TensorRef(StorageRef("float32", 2, data=bytes(8)), 0, (2,), (1,))
    write_torch_zip(str(tmp_path / "a.ckpt"), {"note": trap, "t": t, "also": trap[1:]})
    loaded = torch.load(tmp_path / "a.ckpt", weights_only=True)
    assert loaded["note"] == trap and loaded["also"] == trap[1:] and loaded["t"].shape == (2,)


def test_cli_refuses_a_checkpoint_whose_hyper_parameter_torch_could_not_read_back(tmp_path, cli, v1_args):
    ckpt = torch.load(FIXTURES / V1["file"], weights_only=False)  # our own fixture: trusted
    big = 10**700  # pickled as LONG4: written with exit 0 before, then unloadable
    ckpt["hyper_parameters"]["big"] = big
    torch.save(ckpt, tmp_path / "old.ckpt")
    code, _, stderr = cli("ckpt", tmp_path / "old.ckpt", tmp_path / "new.ckpt", *v1_args)
    assert code == 3 and "['big']: an integer of 701 digits cannot be written" in stderr
    assert _entries(tmp_path) == ["cfg", "old.ckpt"]


def test_signal_during_publish_is_delivered_after_new_is_complete(tmp_path, monkeypatch):
    """Once the data is synced, a signal no longer abandons the write: NEW is published, then the signal
    reaches the handler that was there before (here Python's SIGINT handler: KeyboardInterrupt)."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT has a custom handler in this process")
    real = os.replace

    def replace_then_signal(*args, **kw):
        signal.raise_signal(signal.SIGINT)  # arrives between the rename's decision and the rename
        return real(*args, **kw)

    monkeypatch.setattr(os, "replace", replace_then_signal)
    with pytest.raises(KeyboardInterrupt) as err:
        write_torch_zip(str(tmp_path / "a.ckpt"), {"note": "complete"})
    assert not isinstance(err.value, writer.Interrupted)  # delivered afterwards, not turned into an abort
    assert torch.load(tmp_path / "a.ckpt", weights_only=True)["note"] == "complete"
    assert _entries(tmp_path) == ["a.ckpt"]
