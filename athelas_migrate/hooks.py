"""Late-bound services: how the plain model layer reaches the migration engine above it without importing it.

`AthelasModule.load_from_checkpoint` needs the engine (restricted reader, detection, in-memory migration), but
the models must never import the engine (the import graph flows one way; tests/test_architecture.py). So the
models call `checkpoint_reader()`, and the package (`athelas_migrate/__init__.py`, which runs before any
submodule) installs the engine's reader. To change how models load files, install another reader here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

#: (source, overrides, cls) -> the v2 checkpoint dict with torch tensors; see athelas_migrate.materialise.
CheckpointReader = Callable[[Any, "Mapping[str, Any] | None", "type | None"], dict[str, Any]]

_reader: CheckpointReader | None = None


def install_checkpoint_reader(reader: CheckpointReader) -> None:
    """Make `reader` the function `AthelasModule.load_from_checkpoint` reads files with.

    Args:
        reader: (source, overrides, cls) -> the v2 checkpoint dict with torch tensors.
    """
    global _reader
    _reader = reader


def checkpoint_reader() -> CheckpointReader:
    """The installed reader.

    Returns:
        The function `install_checkpoint_reader` was last given.

    Raises:
        RuntimeError: none is installed (only possible if the package's `__init__` did not run).
    """
    if _reader is None:
        raise RuntimeError("no checkpoint reader installed (athelas_migrate/__init__.py installs it)")
    return _reader


#: () -> the historical class paths the model families declare; see athelas_migrate.io.unpickling.class_paths.
ClassPathSource = Callable[[], Iterable[str]]

_class_path_source: ClassPathSource | None = None


def install_class_path_source(source: ClassPathSource) -> None:
    """Make `source` what the restricted reader asks, once, for the families' historical class paths.

    The reader sits below the family registry in the import graph, so the package installs a function that
    imports the registry when the reader first needs it.

    Args:
        source: called with no arguments; returns the class paths the families declare.
    """
    global _class_path_source
    _class_path_source = source


def family_class_paths() -> tuple[str, ...]:
    """The historical class paths the installed source reports.

    Returns:
        The class paths (empty when no source is installed).
    """
    return tuple(_class_path_source()) if _class_path_source is not None else ()
