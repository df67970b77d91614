"""What every family module provides: recognition, configuration, expected layouts, model classes.

Families know nothing about file formats or rule syntax; the engine knows
nothing about any particular model. Expected layouts are pure functions of the
config (no torch, no Lightning), cross-checked against the real classes in tests.

To add a family, subclass `Family` in a family folder and implement `detect`, `configure`, `expected` and
`render_hparams` (override `optimizer_groups` when the optimizer splits parameters); `Needs` and
`merge_config` are the building blocks of `configure`.
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
    """A family's claim on a checkpoint: the layout version, why (evidence), and how sure (score)."""

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
        """The keys that are parameters (not buffers), in layout order."""
        return [k for k in self.shapes if k not in self.buffers]


class Family:
    """One model family: everything the engine needs, in pure Python; everything else named by reference.

    A family folder (`athelas_migrate/families/<folder>/`, or one listed in `ATHELAS_MIGRATE_FAMILIES`) defines
    its `Family` subclasses in `__init__.py` and lists them in a `FAMILIES` tuple; the registry
    (`athelas_migrate.families`) finds them. Classes and adapters are named by "module:Class" strings so that
    detection and migration never import torch: they are imported only when a model is built, verified or
    exported.
    """

    #: the family's name, as rule files (`family = ...`) and stamps spell it
    name: str = ""
    #: the newest layout version; must be the head of the family's rule graph
    latest: str = "v2"
    #: "module:Class" of the refactored (newest) model
    v2_class: str = ""
    #: layout version -> "module:Class" of the legacy class with that layout
    legacy_classes: dict[str, str] = {}
    #: "module:Class" of the equivalence runner's adapter (a `VerifyAdapter`, usually `<folder>.verify`)
    verify_adapter: str = ""
    #: "module:function" returning the ONNX `InputSpec` of a `v2_class` model (usually `<folder>.onnx`)
    onnx_spec: str = ""
    #: class path a whole pickled legacy module was saved under (`torch.save(model)`) -> "module:Class" of the
    #: frozen class reproducing it; the restricted reader accepts exactly these as inert records
    historical_classes: dict[str, str] = {}
    #: hyper-parameter keys this family adds to `config_keys.KEY_TYPES` (for typed `--set KEY=VALUE`)
    key_types: dict[str, str] = {}

    def detect(self, raw: RawCheckpoint) -> Detection | None:
        """Recognise a checkpoint of this family from its keys, shapes and hyper-parameters.

        Args:
            raw: the checkpoint as read (keys, shapes, hyper-parameters; no tensor values needed).

        Returns:
            The detection (a higher score beats other families' claims), or None when it is not this family's.
        """
        raise NotImplementedError

    def configure(self, raw: RawCheckpoint, version: str, overrides: dict[str, Any]) -> dict[str, Any]:
        """The canonical flat config (everything needed to rebuild any version's model).

        Args:
            raw: the checkpoint as read (keys, shapes, hyper-parameters; no tensor values needed).
            version: its detected layout version.
            overrides: the user's values (`--set`, `--config`, sidecars), which win over the file's.

        Returns:
            The config.
        """
        raise NotImplementedError

    def expected(self, config: dict[str, Any], version: str) -> Expected:
        """The exact state-dict layout of a model of this config at a layout version (pure Python).

        Args:
            config: the canonical config (`configure`).
            version: the layout version.

        Returns:
            The ordered keys with shapes, and which are buffers.
        """
        raise NotImplementedError

    def render_hparams(self, config: dict[str, Any], version: str, state: OrderedDict) -> dict[str, Any]:
        """The `hyper_parameters` a checkpoint of that layout version holds, so its class can load it.

        Args:
            config: the canonical config.
            version: the output's layout version.
            state: the output's state dict (some hyper-parameters echo its shapes).

        Returns:
            The hyper-parameters to write.
        """
        raise NotImplementedError

    def optimizer_groups(self, config: dict[str, Any], version: str, params: list[str],
                         n_groups: int) -> list[list[str]]:
        """Split parameters into the optimizer's groups, so optimizer state moves with its parameters.

        Args:
            config: the canonical config.
            version: the layout version whose parameter order `params` follows.
            params: the parameter names, in the model's order.
            n_groups: how many groups the checkpoint's optimizer state has.

        Returns:
            Parameter names per group, in the order the family's optimizer enumerates them.
        """
        return [params]


def load_class(spec: str) -> Any:
    """The class (or function) named by "module:Class".

    Families name their classes by string so that they never import the models or the legacy package.

    Args:
        spec: "package.module:Name"; the package may be an extra family folder (`ATHELAS_MIGRATE_FAMILIES`).

    Returns:
        The named object.

    Raises:
        ImportError, AttributeError: the module or the name does not exist.
    """
    import importlib

    from ..family_path import import_family_folders

    import_family_folders()
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def merge_config(base: dict[str, Any], derived: dict[str, Any], overrides: dict[str, Any], where: str) -> dict:
    """Merge a config: hyper-parameters < shapes < user overrides.

    Args:
        base: the hyper-parameters the file holds.
        derived: the values read off the tensor shapes.
        overrides: the user's values.
        where: names the file in messages.

    Returns:
        The merged config.

    Raises:
        MissingInformationError: a hyper-parameter contradicts the tensor shapes.
        UsageError: a user value contradicts the tensor shapes.
    """
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


#: Marks an unknown value in a written config skeleton; a config still holding one is refused.
REQUIRED_MARK = "<required"


@dataclass
class Need:
    """One value a migration needs that the file cannot tell."""

    key: str
    why: str
    example: Any


class Needs:
    """Collects what a checkpoint cannot tell during `configure`, so the first refusal names all of it."""

    def __init__(self) -> None:
        self.items: list[Need] = []

    def ask(self, config: dict[str, Any], key: str, why: str, example: Any) -> Any:
        """A config value, or a recorded need for it.

        Args:
            config: the config being built.
            key: the config key (dotted for a nested one: bert_config.x).
            why: what the value is for, as the refusal says it.
            example: an example value, for the refusal and the skeleton.

        Returns:
            `config[key]`, or None after recording that it is needed (callers skip checks that depend on it).
        """
        if config.get(key) in (None, "", []):
            self.add(key, why, example)
            return None
        return config[key]

    def add(self, key: str, why: str, example: Any) -> None:
        """Record a needed value (once per key).

        Args:
            key: the key (dotted for a nested one: bert_config.x).
            why: what the value is for.
            example: an example value.
        """
        if all(n.key != key for n in self.items):
            self.items.append(Need(key, why, example))

    def raise_if_any(self, where: str, known: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
        """Refuse with every need at once, and a config skeleton with the needs marked.

        Args:
            where: names the file in the message.
            known: the values known so far (the skeleton's plain values).
            extra: more values for the skeleton.

        Raises:
            MissingInformationError: when anything is needed.
        """
        if not self.items:
            return
        skeleton = config_skeleton(known, self.items, extra)
        lines = [f"{where}: a migration needs {len(self.items)} value(s) the file cannot tell:"]
        lines += [f"  {n.key}: {n.why} (e.g. {json.dumps(n.example)})" for n in self.items]
        sets = " ".join(f"--set {n.key}={n.example}" if isinstance(n.example, str) else
                        f"--set '{n.key}={json.dumps(n.example, separators=(',', ':'))}'"
                        for n in self.items if "." not in n.key)
        lines.append("Best source: the original training config: pass it with --config FILE.json. Or fill in "
                     + json.dumps(config_skeleton({}, self.items, short=True))
                     + " (--write-config FILE.json writes it with every known value filled in)"
                     + (f", or pass e.g. {sets}" if sets else "") + ".")
        raise MissingInformationError("\n".join(lines), self.items, skeleton)


def config_skeleton(known: dict[str, Any], needs: list[Need], extra: dict[str, Any] | None = None,
                    short: bool = False) -> dict:
    """The config a user fills in: known plain values, then each need marked.

    Args:
        known: the values known so far (private and non-plain ones are left out).
        needs: the missing values.
        extra: more known values.
        short: mark needs `<required>` instead of `<required: why>`.

    Returns:
        The skeleton (dotted keys nest: bert_config.x).
    """
    out: dict[str, Any] = {k: v for k, v in known.items() if not k.startswith("_") and _plain(v)}
    out.update({k: v for k, v in (extra or {}).items() if _plain(v)})
    for n in needs:
        head, _, tail = n.key.partition(".")
        if tail:
            sub = out.get(head) if isinstance(out.get(head), dict) else {}
            out[head] = {**sub, tail: "<required>" if short else f"{REQUIRED_MARK}: {n.why}>"}
        else:
            out[n.key] = "<required>" if short else f"{REQUIRED_MARK}: {n.why}>"
    return out


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float | str):
        return True
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def refuse_marked(overrides: dict[str, Any]) -> None:
    """Refuse a skeleton passed back with a value still marked required.

    Args:
        overrides: the user's values.

    Raises:
        UsageError: naming the keys still marked.
    """
    marked = [k for k, v in overrides.items() if isinstance(v, str) and v.startswith(REQUIRED_MARK)]
    marked += [f"{k}.{kk}" for k, v in overrides.items() if isinstance(v, dict)
               for kk, vv in v.items() if isinstance(vv, str) and vv.startswith(REQUIRED_MARK)]
    if marked:
        raise UsageError(f"the config still marks {', '.join(marked)} as required: fill in the real values")


def stamped_layout(raw: RawCheckpoint, families: dict[str, Family]) -> tuple[str, str] | None:
    """(family, layout) from a valid layout stamp; None when there is no stamp or it names a family this tool
    does not know (a user's subclass: detected from the keys instead).

    A stamp is trusted only when it is complete and its version is one this tool knows: a newer or unknown
    version would otherwise end in a misleading missing-key error far from the cause. Its types were checked
    when the file was read (io.values: a dict whose 'layout' and 'family', where present, are strings).

    Args:
        raw: the checkpoint as read.
        families: the known families by name.

    Returns:
        (family, layout), or None.

    Raises:
        UnknownLayoutError: a malformed stamp, an unknown layout of a known family, or a newer layout.
    """
    stamp = raw.top.get(STAMP_KEY, raw.stamp) if isinstance(raw.top, dict) else raw.stamp
    if stamp is None:
        return None
    where = f"{raw.path}: layout stamp {STAMP_KEY!r}"
    layout, family = stamp.get("layout"), stamp.get("family")
    if layout is None or family is None:
        raise UnknownLayoutError(f"{where} is malformed: it needs both 'layout' and 'family', got "
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
