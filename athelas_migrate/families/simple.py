"""`SimpleFamily`: a family written as data, for Lightning classes whose hyper-parameters are their constructor
keyword arguments.

A family folder subclasses it and fills in class attributes; no method needs writing::

    # myfamily/__init__.py
    from athelas_migrate.families.simple import SimpleFamily

    class MyFamily(SimpleFamily):
        name = "MyModel"
        v2_class = "myfamily.models:MyModelV2"
        legacy_classes = {"v1": "myfamily.models:MyModelV1"}
        verify_adapter = "myfamily.verify:MyModelAdapter"
        onnx_spec = "myfamily.onnx:spec"
        signatures = {"v1": (r"net\\.\\d+\\.weight", r"net\\.\\d+\\.bias"),
                      "v2": (r"body\\.\\d+\\.weight", r"body\\.\\d+\\.bias")}
        layout = "myfamily.layout:expected"   # optional: a pure-Python (config, version) -> Expected

    FAMILIES = (MyFamily(),)

Detection: a version is recognised when every key of the state dict matches one of its signature regexes and every
regex matches at least one key (so a file of another family is never claimed). The evidence lists the keys that
matched. The config is the checkpoint's hyper-parameters plus the user's overrides; the rendered hyper-parameters
are that config (plus `extra_hparams`). Differences in hyper-parameter names between versions belong in the rule
files' `[[hparams]]` section, not here.

Expected layouts come from `layout` when the folder gives one (pure Python, e.g. with `families/layout.py`'s
`LayoutBuilder`). Without one they are read off the real class built on the meta device: that fallback imports
torch (lazily, only when a layout is needed), so a family that uses it gives up the torch-free migration path.
Bundled families must give `layout` (tests/test_torch_free.py).
"""

from __future__ import annotations

import inspect
import json
import re
from collections import OrderedDict
from typing import Any

from ..errors import MissingInformationError
from ..io.reader import RawCheckpoint
from .base import Detection, Expected, Family, load_class, merge_config

#: Lightning's `hparams_name` for hyper-parameters that are the constructor's keyword arguments.
KEYWORD_ARGUMENTS = "kwargs"

#: Detection score of a signature match (above the key-pattern heuristics of the bundled families, below a
#: pickled class path or a layout stamp).
SIGNATURE_SCORE = 4


class SimpleFamily(Family):
    """A `Family` declared by class attributes; see the module docstring."""

    #: version -> regexes (full match) that together cover exactly that version's state-dict keys
    signatures: dict[str, tuple[str, ...]] = {}
    #: "module:function" `(config, version) -> Expected` in pure Python; empty: built on the meta device
    layout: str = ""
    #: version -> hyper-parameters added when a file of that version is written (e.g. a `model_class`)
    extra_hparams: dict[str, dict[str, Any]] = {}
    #: version -> the constructor argument the whole config is passed as (e.g. {"v2": "config"} for an
    #: `AthelasModule`); absent: the config's keys are the constructor's keyword arguments
    config_arg: dict[str, str] = {}

    def detect(self, raw: RawCheckpoint) -> Detection | None:
        """The version whose signatures cover the state dict exactly, with the keys each regex matched."""
        keys = list(raw.state_dict)
        for version, patterns in self.signatures.items():
            matched = signature_match(keys, patterns)
            if matched is not None:
                evidence = [f"{pattern}: {', '.join(hits[:3])}{' ...' if len(hits) > 3 else ''}"
                            for pattern, hits in matched.items()]
                return Detection(self.name, version, [f"every key matches a {self.name} {version} signature"]
                                 + evidence, SIGNATURE_SCORE)
        return None

    def configure(self, raw: RawCheckpoint, version: str, overrides: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint's hyper-parameters (the constructor's keyword arguments) plus `overrides`."""
        hp = raw.hyper_parameters if isinstance(raw.hyper_parameters, dict) else {}
        name = self.config_arg.get(version)
        if name and isinstance(hp.get(name), dict):
            hp = hp[name]
        base = {k: v for k, v in hp.items() if isinstance(k, str) and not hasattr(v, "shape")}
        config = merge_config(base, {}, overrides, raw.path)
        if not config:
            raise MissingInformationError(f"{raw.path}: a {self.name} {version} file without hyper-parameters; "
                                          "pass the constructor's arguments with --config FILE.json")
        return config

    def expected(self, config: dict[str, Any], version: str) -> Expected:
        """The state dict of the `version` class for `config`: from `layout`, else built on the meta device."""
        if self.layout:
            return load_class(self.layout)(config, version)
        key = (version, json.dumps(constructor_args(config), sort_keys=True, default=repr))
        cache = self.__dict__.setdefault("_layouts", {})
        if key not in cache:
            classpath = self.class_for(version)
            cache[key] = meta_layout(classpath, self.constructor_kwargs(config, version, load_class(classpath)))
        return cache[key]

    def render_hparams(self, config: dict[str, Any], version: str, state: OrderedDict) -> dict[str, Any]:
        """The hyper-parameters a `version` file holds: the config plus that version's `extra_hparams`."""
        return {**constructor_args(config), **self.extra_hparams.get(version, {})}

    def class_for(self, version: str) -> str:
        """ "module:Class" of the model with the `version` layout.

        Args:
            version: a layout version of the family.

        Returns:
            `v2_class` for the latest version, else the legacy class registered for it.
        """
        return self.v2_class if version == self.latest else self.legacy_classes[version]

    def constructor_kwargs(self, config: dict[str, Any], version: str, cls: type | None = None) -> dict[str, Any]:
        """The keyword arguments that rebuild the `version` model (of class `cls`, when given) from `config`.

        Args:
            config: the canonical config.
            version: the layout version to build.
            cls: the class, so keys its constructor does not accept are left out; None keeps every key.

        Returns:
            `{config_arg: config}` for a version whose class takes the config as one argument, else the
            config's entries as keyword arguments.
        """
        args = constructor_args(config)
        name = self.config_arg.get(version)
        if name:
            return {name: args}
        return accepted(cls, args) if cls is not None else args

    @property
    def hparams_name(self) -> dict[str, str]:
        """Version -> the checkpoint's `hparams_name` (how Lightning passes the hyper-parameters back): the
        `config_arg`, else "kwargs" (as `save_hyperparameters()` of keyword arguments writes), so that a file
        written for a version says what that version's class takes, whatever the source file said."""
        versions = [*self.legacy_classes, self.latest]
        return {v: self.config_arg.get(v, KEYWORD_ARGUMENTS) for v in versions}


def constructor_args(config: dict[str, Any]) -> dict[str, Any]:
    """`config` without the pipeline's private entries.

    Args:
        config: a family config (`configure`'s result).

    Returns:
        Its entries whose keys do not start with "_" (such as `_notes`).
    """
    return {k: v for k, v in config.items() if not k.startswith("_")}


def accepted(cls: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The entries of `kwargs` that `cls`'s constructor takes.

    A config carries more than one version's constructor takes: keys another version added (verify fills in the
    legacy side's config from the refactored file), bookkeeping such as `label_name`.

    Args:
        cls: a class.
        kwargs: candidate keyword arguments.

    Returns:
        The entries naming a parameter of `cls.__init__`; all of them when it takes `**kwargs`.
    """
    params = inspect.signature(cls.__init__).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return kwargs
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in kwargs.items() if k in names}


def signature_match(keys: list[str], patterns: tuple[str, ...]) -> dict[str, list[str]] | None:
    """Which keys each signature regex matched, when the regexes cover `keys` exactly.

    Args:
        keys: state-dict keys.
        patterns: regexes, each matched against a whole key.

    Returns:
        Regex -> the keys it matched (first matching regex wins), or None when a key matches no regex or a
        regex matches no key.
    """
    compiled = [(p, re.compile(p)) for p in patterns]
    matched: dict[str, list[str]] = {p: [] for p in patterns}
    for k in keys:
        hit = next((p for p, rx in compiled if rx.fullmatch(k)), None)
        if hit is None:
            return None
        matched[hit].append(k)
    return matched if keys and all(matched.values()) else None


def key_signatures(keys: list[str]) -> tuple[str, ...]:
    """Regexes covering `keys` with every run of digits generalised (so layer counts may differ), in order.

    Args:
        keys: state-dict keys of one version.

    Returns:
        One regex per distinct key shape, e.g. ``net\\.\\d+\\.weight``.
    """
    out: list[str] = []
    for k in keys:
        rx = r"\d+".join(re.escape(part) for part in re.split(r"\d+", k))
        if rx not in out:
            out.append(rx)
    return tuple(out)


def meta_layout(classpath: str, kwargs: dict[str, Any]) -> Expected:
    """The layout of `classpath(**kwargs)` built on the meta device (imports torch: the documented fallback).

    Args:
        classpath: "module:Class" of a torch module.
        kwargs: its constructor's keyword arguments.

    Returns:
        Ordered keys and shapes; the buffers; the integer buffers.
    """
    import torch

    with torch.device("meta"):
        model = load_class(classpath)(**kwargs)
    state = model.state_dict()
    buffers = {k for k, _ in model.named_buffers() if k in state}
    ints = {k for k in buffers if not state[k].is_floating_point()}
    return Expected(OrderedDict((k, tuple(t.shape)) for k, t in state.items()), buffers, ints)
