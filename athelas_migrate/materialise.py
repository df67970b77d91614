"""Materialise: from a migrated checkpoint to torch objects (a refactored model, or the v2 checkpoint dict that
``AthelasModule.load_from_checkpoint`` feeds to Lightning). The engine layer: it may import the models; the models
reach it only through the hook in `athelas_migrate.hooks`, which the package installs.

The file goes through the package's restricted reader (io/safe_unpickle.py) whatever the environment says,
legacy layouts are migrated in memory, and only then are the tensors decoded (memory-mapped copy-on-write).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from typing import Any

from .errors import UnknownLayoutError, UsageError
from .families import detect, get_family
from .families.base import load_class
from .io.reader import read_checkpoint
from .io.tensor_ref import TensorRef
from .pipeline import MigrationResult, plan_and_apply

__all__ = ["build_v2_model", "check_family", "materialise", "read_checkpoint_dict"]


def build_v2_model(result: MigrationResult) -> Any:
    """Instantiate the refactored class of `result` and load its state strictly, memory-mapped.

    Tensors are assigned from the file (memory-mapped copy-on-write), so the weights are
    never read into a second copy; only the fresh model's initial values are allocated.

    Args:
        result: a migration to the family's newest layout (`plan_and_apply(...)` without `to`).

    Returns:
        The model in eval mode (float32 when the file holds half-precision weights).
    """
    import torch

    cls = load_class(result.family.v2_class)
    state = {k: t.to_torch(copy=False) for k, t in result.state.items()}
    hparams_name = getattr(result.family, "hparams_name", {}).get(result.target_version)
    if hparams_name and hparams_name != "kwargs":  # Lightning's name for "the keyword arguments themselves"
        model = cls(**{hparams_name: result.hyper_parameters})
    else:
        model = cls(**result.hyper_parameters)
    model.load_state_dict(state, strict=True, assign=True)
    if any(p.dtype in (torch.float16, torch.bfloat16) for p in model.parameters()):
        model = model.float()  # CPU kernels need float32; the values are the fp16-rounded weights
    return model.eval()


def materialise(obj: Any) -> Any:
    """A copy of `obj` with every TensorRef decoded into a torch tensor (shared refs stay shared).

    Args:
        obj: a checkpoint (nested dicts, lists, tuples) as the restricted reader returns it.

    Returns:
        The same structure with torch tensors mapped copy-on-write from the file.
    """
    done: dict[int, Any] = {}

    def walk(cur: Any) -> Any:
        if isinstance(cur, TensorRef):
            if id(cur) not in done:
                done[id(cur)] = cur.to_torch(copy=False)  # copy-on-write map of the file
            return done[id(cur)]
        if isinstance(cur, dict):
            return type(cur)((k, walk(v)) for k, v in cur.items())
        if isinstance(cur, list | tuple):
            return type(cur)(walk(v) for v in cur)
        return cur

    return walk(obj)


def _top_dict(path: str, overrides: Mapping[str, Any] | None, cls: type | None = None) -> dict[str, Any]:
    """The checkpoint dict of `path` at the v2 layout (TensorRefs), migrated in memory when it is older."""
    raw = read_checkpoint(path)
    try:
        detection = detect(raw)
    except UnknownLayoutError:  # a Lightning file of a model outside the known families: as it is
        if raw.kind != "lightning":
            raise
        return raw.top
    if cls is not None:
        check_family(cls, detection.family, detection.version, path)  # before migrating: name the right class
    if raw.kind == "lightning" and detection.version == get_family(detection.family).latest:
        return raw.top
    result = plan_and_apply(path, overrides=dict(overrides or {}), raw=raw)
    warnings.warn(f"{path} is a {result.source_version} checkpoint; it was migrated in memory. Run "
                  f"`athelas-migrate ckpt {path} NEW.ckpt` to migrate the file for good.", DeprecationWarning,
                  stacklevel=5)  # user -> load_from_checkpoint -> hook -> read_checkpoint_dict -> here
    return result.checkpoint


def read_checkpoint_dict(source: Any, overrides: Mapping[str, Any] | None = None,
                         cls: type | None = None) -> dict[str, Any]:
    """The v2 checkpoint dict (torch tensors) of a path or binary file object, read safely.

    The reader `athelas_migrate.hooks` installs for `AthelasModule.load_from_checkpoint`; an older layout is
    migrated in memory, with a DeprecationWarning that says how to migrate the file for good.

    Args:
        source: a local path, or a binary file object (spooled to a private temporary file).
        overrides: hyper-parameters the checkpoint lacks.
        cls: the class loading it; a file of another family is then refused first, naming the right class.

    Returns:
        The Lightning checkpoint dict with torch tensors.

    Raises:
        UsageError: `source` is neither a path nor a file object, or the file belongs to another class.
    """
    if hasattr(source, "read"):  # a file object: spooled to a private file the reader can map
        with tempfile.TemporaryDirectory(prefix="athelas-load-") as tmp:
            path = os.path.join(tmp, "checkpoint")
            with open(path, "wb") as fh:
                shutil.copyfileobj(source, fh)
            return materialise(_top_dict(path, overrides, cls))
    if not isinstance(source, str | os.PathLike):
        raise UsageError(f"load_from_checkpoint: expected a local path or a binary file object, got "
                         f"{type(source).__name__}")
    return materialise(_top_dict(os.fspath(source), overrides, cls))


def check_family(cls: type, family: str, version: str, path: str) -> None:
    """Refuse a checkpoint of another family before migrating it, naming the class that loads it (else the
    migration succeeds and Lightning fails later with a list of unexpected keys).

    Args:
        cls: the class asked to load the file (a subclass of the family's class is accepted).
        family: the detected family.
        version: the detected layout version (for the message).
        path: the file (for the message).

    Raises:
        UsageError: `cls` is not the family's refactored class or a subclass of it.
    """
    from . import models

    right = load_class(get_family(family).v2_class)
    if isinstance(cls, type) and issubclass(cls, right):
        return
    public = f"athelas_migrate.models.{right.__name__}" if getattr(models, right.__name__, None) is right else \
        f"{right.__module__}.{right.__qualname__}"
    raise UsageError(f"{path} is a {family} checkpoint (layout {version}), not a {cls.__name__} one: load it with "
                     f"{public}.load_from_checkpoint(...) (or athelas_migrate.load_model(path), which picks the class)")
