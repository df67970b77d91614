"""What every family module provides: recognition, configuration, expected layouts, model classes.

Families know nothing about file formats or rule syntax; the engine knows
nothing about any particular model. Expected layouts are pure functions of the
config (no torch, no Lightning), cross-checked against the real classes in tests.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from ..errors import MissingInformationError, UnknownLayoutError, UsageError
from ..io.reader import STAMP_KEY, RawCheckpoint


@dataclass
class Detection:
    family: str
    version: str
    evidence: list[str]
    score: int = 1
    notes: list[str] = field(default_factory=list)


@dataclass
class Expected:
    """The exact state-dict layout a model has: ordered keys with shapes; which keys are parameters."""

    shapes: OrderedDict[str, tuple[int, ...]]
    buffers: set[str]
    int_keys: set[str] = field(default_factory=set)  # integer tensors that belong (e.g. BERT position_ids)

    @property
    def parameters(self) -> list[str]:
        return [k for k in self.shapes if k not in self.buffers]


class Family:
    name: str = ""
    latest: str = "v2"
    v2_class: str = ""  # "module:Class" of the refactored model
    legacy_classes: dict[str, str] = {}  # version -> "module:Class"

    def detect(self, raw: RawCheckpoint) -> Detection | None:
        raise NotImplementedError

    def configure(self, raw: RawCheckpoint, version: str, overrides: dict[str, Any]) -> dict[str, Any]:
        """The canonical flat config (everything needed to rebuild any version's model)."""
        raise NotImplementedError

    def expected(self, config: dict[str, Any], version: str) -> Expected:
        raise NotImplementedError

    def render_hparams(self, config: dict[str, Any], version: str, state: OrderedDict) -> dict[str, Any]:
        raise NotImplementedError

    def optimizer_groups(self, config: dict[str, Any], version: str, params: list[str],
                         n_groups: int) -> list[list[str]]:
        """Parameter names per optimizer group, in the order the family's optimizer enumerates them."""
        return [params]

    def classpath(self, version: str) -> str:
        return self.v2_class if version == "v2" else self.legacy_classes[version]


def load_class(spec: str) -> Any:
    import importlib

    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def shape_of(raw_state: dict, key: str) -> tuple[int, ...] | None:
    t = raw_state.get(key)
    return tuple(t.shape) if t is not None else None


def merge_config(base: dict[str, Any], derived: dict[str, Any], overrides: dict[str, Any], where: str) -> dict:
    """Hyper-parameters < shapes < user overrides; a user value that contradicts a tensor shape is refused."""
    config = dict(base)
    for k, v in derived.items():
        if k in config and config[k] is not None and _norm(config[k]) != _norm(v):
            raise MissingInformationError(
                f"{where}: hyper-parameter {k}={config[k]!r} contradicts the tensor shapes ({k}={v!r})")
        config[k] = v
    for k, v in overrides.items():
        if k in derived and _norm(derived[k]) != _norm(v):
            raise UsageError(f"--set {k}={json.dumps(v)} contradicts the tensor shapes ({k}={derived[k]!r})")
        config[k] = v
    return config


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def require(config: dict[str, Any], key: str, why: str, example: str) -> Any:
    if config.get(key) in (None, "", []):
        raise MissingInformationError(
            f"the checkpoint does not say {key!r} ({why}); pass it with --set {key}={example} "
            f"or --config FILE.json")
    return config[key]


def stamped_layout(raw: RawCheckpoint, families: dict[str, Family]) -> tuple[str, str] | None:
    """(family, layout) from a valid layout stamp; None when there is no stamp or it names a family this tool
    does not know (a user's subclass: detected from the keys instead).

    A stamp is trusted only when it is well formed and its version is one this tool knows: a newer or unknown
    version would otherwise end in a misleading missing-key error far from the cause."""
    stamp = raw.top.get(STAMP_KEY, raw.stamp) if isinstance(raw.top, dict) else raw.stamp
    if stamp is None:
        return None
    where = f"{raw.path}: layout stamp {STAMP_KEY!r}"
    if not isinstance(stamp, dict):
        raise UnknownLayoutError(f"{where} is malformed: expected a table with 'layout' and 'family', "
                                 f"got {type(stamp).__name__}")
    layout, family = stamp.get("layout"), stamp.get("family")
    if not isinstance(layout, str) or not isinstance(family, str):
        raise UnknownLayoutError(f"{where} is malformed: 'layout' and 'family' must be strings, got "
                                 f"layout={layout!r}, family={family!r}")
    fam = families.get(family)
    known = sorted(set(fam.legacy_classes) | {fam.latest}) if fam else []
    newest = fam.latest if fam else max((f.latest for f in families.values()), key=_version_number)
    m = re.fullmatch(r"v(\d+)", layout)
    if m and int(m.group(1)) > _version_number(newest):
        raise UnknownLayoutError(f"{raw.path}: written by a newer athelas-migrate (layout {layout}); this version "
                                 f"knows up to {newest}")
    if fam is None:
        return None
    if layout not in known:
        raise UnknownLayoutError(f"{where} names an unknown layout version {layout!r} (known for {family}: "
                                 f"{', '.join(known)})")
    return family, layout


def _version_number(version: str) -> int:
    return int(version[1:])
