"""Registry of model families and detection of (family, layout version) with evidence.

A family is one folder: a package under `athelas_migrate/families/` (bundled) or a folder listed in
`ATHELAS_MIGRATE_FAMILIES` (see `athelas_migrate.family_path`), whose `__init__.py` defines `Family`
subclasses (detection, configuration, pure-Python layouts, class references) and lists instances in a
`FAMILIES` tuple; its `verify.py` and `onnx.py` hold the verify adapter and the ONNX input spec, imported only when
used. The registry finds the folders itself: adding a family touches its folder, its rule files and its fixtures
(README, "Adding a layout version or a family"). tests/test_families_complete.py checks each family has every part.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from ..config_keys import register_key_types
from ..errors import UnknownLayoutError, UsageError
from ..family_path import import_family_folders
from ..io.reader import RawCheckpoint
from ..io.unpickling.class_paths import register_historical_class_paths
from .base import Detection, Expected, Family, stamped_layout


def _bundled_folders() -> list[ModuleType]:
    """The family folders shipped in this package (its subpackages), in name order."""
    return [importlib.import_module(f"{__name__}.{info.name}")
            for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name) if info.ispkg]


def _collect(folders: list[ModuleType], found: dict[str, Family]) -> dict[str, Family]:
    for folder in folders:
        families = getattr(folder, "FAMILIES", None)
        if families is None and _initialising(folder):
            found.pending.append(folder)  # type: ignore[attr-defined]
            continue
        if not isinstance(families, tuple) or not all(isinstance(f, Family) for f in families):
            raise UsageError(f"family folder {folder.__name__}: FAMILIES must be a tuple of Family instances")
        for fam in families:
            if fam.name in found:
                raise UsageError(f"family {fam.name!r} is defined twice ({folder.__name__})")
            dict.__setitem__(found, fam.name, fam)
            register_key_types(fam.key_types, fam.name)
    return found


def _initialising(module: ModuleType) -> bool:
    """Whether `module` is still being imported (its code imported this package before defining FAMILIES)."""
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


class _Registry(dict):
    """The families by name. A family folder imported directly (`import myfolder.models` with the folder listed in
    `ATHELAS_MIGRATE_FAMILIES`) imports this package while it is itself still initialising: its families join on
    the first lookup after its import finished."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[ModuleType] = []

    def _complete(self) -> None:
        done = [m for m in self.pending if not _initialising(m)]
        if done:
            self.pending = [m for m in self.pending if m not in done]
            _collect(done, self)

    def __getitem__(self, key: str) -> Family:
        self._complete()
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self._complete()
        return super().__contains__(key)

    def __iter__(self):  # noqa: ANN204 - dict's own signature
        self._complete()
        return super().__iter__()

    def __len__(self) -> int:
        self._complete()
        return super().__len__()

    def get(self, key: str, default: Family | None = None) -> Family | None:  # type: ignore[override]
        self._complete()
        return super().get(key, default)

    def keys(self):  # noqa: ANN201
        self._complete()
        return super().keys()

    def values(self):  # noqa: ANN201
        self._complete()
        return super().values()

    def items(self):  # noqa: ANN201
        self._complete()
        return super().items()


#: Every known family by name: the bundled folders', then the extra folders' (`ATHELAS_MIGRATE_FAMILIES`).
FAMILIES: dict[str, Family] = _collect(_bundled_folders() + import_family_folders(), _Registry())


def register(family: Family) -> None:
    """Add (or replace) a family at run time (a family folder is found without it; see the module docstring).

    Args:
        family: the family; its key types and historical class paths are registered too.
    """
    register_key_types(family.key_types, family.name)
    register_historical_class_paths(family.historical_classes)
    FAMILIES[family.name] = family


def get_family(name: str) -> Family:
    """Look a family up by name, case-insensitively.

    Args:
        name: the family name (`--family`, a rule file's `family`).

    Returns:
        The family.

    Raises:
        UnknownLayoutError: an unknown name (the message lists the known ones).
    """
    fam = FAMILIES.get(name) or next((f for n, f in FAMILIES.items() if n.lower() == str(name).lower()), None)
    if fam is None:
        raise UnknownLayoutError(f"unknown family {name!r} (known: {', '.join(sorted(FAMILIES))})")
    return fam


def detect(raw: RawCheckpoint) -> Detection:
    """Family and layout version of a checkpoint: a layout stamp wins; otherwise keys, shapes and
    hyper-parameters, through each family's `detect` (the highest score wins).

    Args:
        raw: the checkpoint as read (io.reader).

    Returns:
        The detection, with its evidence.

    Raises:
        UnknownLayoutError: no family matches, two match equally well, or the stamp is unusable.
    """
    stamped = stamped_layout(raw, FAMILIES)  # refuses malformed, unknown and newer stamps
    if stamped:
        return Detection(*stamped, [f"layout stamp athelas_migrate.layout={stamped[1]!r}"], 10)
    hits = [d for f in FAMILIES.values() if (d := f.detect(raw)) is not None]
    if not hits:
        sample = ", ".join(list(raw.state_dict)[:6]) or "no tensors"
        raise UnknownLayoutError(f"{raw.path}: matches no known model family (keys: {sample})")
    hits.sort(key=lambda d: -d.score)
    if len(hits) > 1 and hits[0].score == hits[1].score:
        raise UnknownLayoutError(f"{raw.path}: ambiguous: looks like both {hits[0].family} and {hits[1].family}")
    return hits[0]


__all__ = ["Detection", "Expected", "Family", "FAMILIES", "detect", "get_family", "register"]
