"""One rule for every file a command writes (checkpoints, reports, configs, ONNX, predictions).

An existing file is replaced only with `--force`; the input is never the output; a directory is refused;
missing parent directories are created. Failures to create them are output errors (exit 4), not input errors.
"""

from __future__ import annotations

import os

from .errors import OutputError, OutputExistsError, UsageError


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
