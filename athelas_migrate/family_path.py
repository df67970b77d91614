"""Family folders outside the package: where they are, and importing them.

A family is one folder (a Python package): the bundled ones live in `athelas_migrate/families/<name>/`; others
(a team's own models, a plugin, the tests' toy family) anywhere, listed in the environment variable
`ATHELAS_MIGRATE_FAMILIES` (paths separated by `os.pathsep`). Such a folder holds its rule files in its own
`mappings/<Family>/` subfolder. The folders are imported under their own name, as if their parent directory were
on `sys.path`, so the folder's classes are named "folder.module:Class" like any other.

This module sits at the bottom of the import graph (the rule graph and the family registry both read it) and
imports nothing of the package but its errors.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from .errors import UsageError

#: The environment variable listing extra family folders.
FAMILIES_ENV = "ATHELAS_MIGRATE_FAMILIES"


def extra_family_folders() -> tuple[Path, ...]:
    """The family folders named by `ATHELAS_MIGRATE_FAMILIES`, in order.

    Returns:
        Resolved paths; empty when the variable is unset or empty.

    Raises:
        UsageError: an entry is not a directory holding an `__init__.py`, or two entries share a name.
    """
    folders: list[Path] = []
    for entry in os.environ.get(FAMILIES_ENV, "").split(os.pathsep):
        if not entry.strip():
            continue
        folder = Path(entry).expanduser().resolve()
        if not (folder / "__init__.py").is_file():
            raise UsageError(f"{FAMILIES_ENV}: {entry} is not a family folder (a directory with an __init__.py)")
        if not folder.name.isidentifier():
            raise UsageError(f"{FAMILIES_ENV}: the folder name {folder.name!r} is not a Python identifier")
        if any(f.name == folder.name and f != folder for f in folders):
            raise UsageError(f"{FAMILIES_ENV}: two family folders are named {folder.name!r}")
        if folder not in folders:
            folders.append(folder)
    return tuple(folders)


def extra_mapping_roots() -> tuple[Path, ...]:
    """The `mappings/` subfolders of the extra family folders that have one.

    Returns:
        Those folders, in the order of the family folders.
    """
    return tuple(f / "mappings" for f in extra_family_folders() if (f / "mappings").is_dir())


def import_family_folders() -> list[ModuleType]:
    """Import every extra family folder as a package named after the folder (once per process).

    Returns:
        The folders' package modules, in the order of the environment variable.

    Raises:
        UsageError: a folder is listed wrongly (see `extra_family_folders`), or its name is taken by another
            module (for example a folder named like an installed package).
    """
    modules = []
    for folder in extra_family_folders():
        name = folder.name
        loaded = sys.modules.get(name)
        if loaded is not None:
            if Path(getattr(loaded, "__file__", "") or "").resolve().parent != folder:
                raise UsageError(f"{FAMILIES_ENV}: the family folder {folder} is named like the module {name!r} "
                                 "that is already imported; rename the folder")
            modules.append(loaded)
            continue
        spec = importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        modules.append(module)
    return modules
