"""The checkpoint dict behind ``AthelasModule.load_from_checkpoint``, read without ``torch.load``.

Lightning's own loader calls ``torch.load``, which runs pickled code whenever
``weights_only`` ends up False (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``, an old
Lightning default). Here the file goes through the package's restricted reader
(io/safe_unpickle.py) whatever the environment says, legacy layouts are migrated
in memory, and only then are the tensors materialised; the model is built from
the hyper-parameters and state dict by Lightning's ``_load_state``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from typing import Any

from ..errors import UnknownLayoutError, UsageError

__all__ = ["read_checkpoint_dict", "materialise", "device_of"]

LAYOUT_VERSION = "v2"


def materialise(obj: Any) -> Any:
    """A copy of `obj` with every TensorRef decoded into a torch tensor (shared refs stay shared)."""
    from ..io.tensor_ref import TensorRef

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
    from ..families import detect
    from ..io.reader import read_checkpoint
    from ..pipeline import plan_and_apply

    raw = read_checkpoint(path)
    try:
        detection = detect(raw)
    except UnknownLayoutError:  # a Lightning file of a model outside the known families: as it is
        if raw.kind != "lightning":
            raise
        return raw.top
    if cls is not None:
        from .base import check_family

        check_family(cls, detection.family, detection.version, path)  # before migrating: name the right class
    if raw.kind == "lightning" and detection.version == LAYOUT_VERSION:
        return raw.top
    result = plan_and_apply(path, to=LAYOUT_VERSION, overrides=dict(overrides or {}), raw=raw)
    warnings.warn(f"{path} is a {result.source_version} checkpoint; it was migrated in memory. Run "
                  f"`athelas-migrate ckpt {path} NEW.ckpt` to migrate the file for good.", DeprecationWarning,
                  stacklevel=4)
    return result.checkpoint


def read_checkpoint_dict(source: Any, overrides: Mapping[str, Any] | None = None,
                         cls: type | None = None) -> dict[str, Any]:
    """The v2 checkpoint dict (torch tensors) of a path or binary file object, read safely; with `cls`, a file
    of another family is refused first, naming the class that loads it."""
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


def device_of(map_location: Any) -> Any:
    """Where the model goes: a device for None/str/int/torch.device, or a {'cpu': target} mapping's target.

    The reader decodes every tensor on the CPU, so only mappings from the CPU mean anything."""
    import torch

    if map_location is None:
        return None
    if isinstance(map_location, str | int | torch.device):
        return torch.device(map_location)
    if isinstance(map_location, Mapping):
        target = map_location.get("cpu")
        return torch.device(target) if target is not None else None
    raise UsageError("map_location: a device, a device name or a {'cpu': device} mapping is supported "
                     f"(got {type(map_location).__name__}); the checkpoint is read on the CPU")
