"""One rule for every file a command writes (checkpoints, reports, configs, ONNX, predictions).

An existing file is replaced only with `--force`; the input is never the output; a directory is refused;
missing parent directories are created. Failures to create them are output errors (exit 4), not input errors.
A migration's output is written by `write_result` (torch zip or safetensors, or a verbatim copy), atomically.
The io modules are imported when a file is written, so that checking an output stays cheap.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .errors import InputError, OutputError, OutputExistsError, UsageError


def prepare_output(path: str | os.PathLike[str], force: bool = False, inputs: tuple = ()) -> str:
    """Check `path` as an output of a command reading `inputs`; create its parent directories.

    Args:
        path: the output file.
        force: replace an existing file.
        inputs: the command's input files; none may be the output.

    Returns:
        The path as a str.

    Raises:
        UsageError: `path` is a directory or one of `inputs`.
        OutputExistsError: `path` exists and `force` is False.
        OutputError: its parent directories cannot be created.
    """
    path = os.fspath(path)
    for src in inputs:
        src = os.fspath(src)
        if os.path.realpath(src) == os.path.realpath(path) or (
                os.path.exists(path) and os.path.exists(src) and os.path.samefile(src, path)):
            raise UsageError(f"{path} is the input {src}; an input is never overwritten")
    if os.path.isdir(path):
        raise UsageError(f"{path} is a directory; give a file name")
    if os.path.lexists(path) and not force:
        raise OutputExistsError(f"{path} exists; pass --force to replace it")
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create the output directory {parent}: {exc.strerror or exc}") from None
    return path


def read_inputs_first(*paths: str | os.PathLike[str]) -> None:
    """Read each input checkpoint with the torch-free safe reader before a command imports torch, Lightning or
    transformers: a missing, unreadable, unsafe or malformed file is refused in a fraction of a second instead
    of after seconds of imports. Directories are left to the command.

    Args:
        *paths: the input checkpoints.
    """
    from .io.reader import read_checkpoint

    for path in paths:
        if not os.path.isdir(path):
            read_checkpoint(os.fspath(path))


def write_result(result: Any, dst: str, force: bool = False) -> None:
    """Write atomically; never over the input, never over an existing file without `force`.

    Args:
        result: the pipeline's MigrationResult.
        dst: `.safetensors` (weights and JSON metadata) or anything else (a Lightning-loadable torch zip); a
            no-op migration to anything but `.safetensors` copies the source verbatim.
        force: replace an existing `dst`.
    """
    from .io.reader import STAMP_KEY
    from .io.writer import write_safetensors, write_torch_zip

    prepare_output(dst, force, inputs=(result.raw.path,))
    if result.noop and not dst.endswith(".safetensors"):
        copy_verbatim(result.raw.path, dst)
        return
    if dst.endswith(".safetensors"):
        src = result.raw.path
        meta = {STAMP_KEY: json.dumps(_jsonable(result.stamp, f"{src}: {STAMP_KEY}"), sort_keys=True),
                "hyper_parameters": json.dumps(_jsonable(result.hyper_parameters, f"{src}: hyper_parameters"),
                                               sort_keys=True),
                "format": "pt"}
        write_safetensors(dst, result.state, meta)
    else:
        write_torch_zip(dst, result.checkpoint)


def copy_verbatim(src: str, dst: str) -> None:
    """A file already at the target layout: NEW is a byte-for-byte copy (exit 0 always means NEW exists).

    Copied kernel-side (`copy_range`: reflink file systems share the blocks). The copy must be the whole input
    as it was when opened: a source that shrinks, grows or is rewritten meanwhile is refused.

    Args:
        src: the input file.
        dst: the output file, published atomically.

    Raises:
        InputError: the source changed while it was copied; nothing is published.
    """
    from .io.writer import atomic_output
    from .io.zip_archive import copy_range

    with atomic_output(dst) as fh, open(src, "rb") as inp:
        fh.flush()
        before = os.fstat(inp.fileno())
        copy_range(inp.fileno(), fh.fileno(), 0, before.st_size, what=src, dst=dst)
        after = os.fstat(inp.fileno())
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            raise InputError(f"{src} changed while being copied ({before.st_size} bytes when opened, "
                             f"{after.st_size} now); nothing was written")


def _jsonable(obj: Any, path: str) -> Any:
    """Values for the JSON metadata of a .safetensors file (tensors dropped: they are not metadata). Values JSON
    cannot hold (sets, bytes, complex numbers, ...) are refused by path rather than written lossily; a .ckpt
    output keeps them. The input was validated on load, so this walk is bounded."""
    from .io.tensor_ref import TensorRef
    from .io.values import value_path

    if isinstance(obj, TensorRef):
        return None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v, value_path(path, k)) for k, v in obj.items() if not isinstance(v, TensorRef)}
    if isinstance(obj, list | tuple):
        return [_jsonable(v, f"{path}[{i}]") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, str | int | float):
        return obj
    raise InputError(f"{path}: a value of type {type(obj).__name__} cannot be stored in .safetensors JSON "
                     "metadata; write a .ckpt to keep it")
