"""The class paths whose pickled instances load as inert module records: whole pickled legacy models.

`torch.save(model)` pickles the model object itself; its class path names the legacy family and layout
version, and its sub-modules are torch layers. Each of these classes becomes an inert `Stub` record
(never imported, never instantiated) whose `__dict__` the reader walks, and only when the pickle's root
is such a class. The list is explicit, not a prefix: a prefix would let a pickle make the reader mint
stub classes for names it chooses (the stub-class cache is bounded, but the list is the first line).

The historical class paths come from the model families alone (`Family.historical_classes` in each family
folder): the first time the reader needs the list it asks `athelas_migrate.hooks.family_class_paths()`, which
the package wires to the family registry (this module sits below it in the import graph). To allow another
path at run time, call `register_historical_class_paths`; a torch layer legacy models are built from is added
to `_TORCH_LAYERS`. `module_class_paths()` is what the reader consults.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable

from ... import hooks

# torch.nn.modules.<module>.<class>: the layers the legacy models are built from.
_TORCH_LAYERS = {
    "linear": ("Linear", "Identity", "Bilinear"),
    "conv": ("Conv1d", "Conv2d"),
    "sparse": ("Embedding", "EmbeddingBag"),
    "normalization": ("LayerNorm",),
    "batchnorm": ("BatchNorm1d", "BatchNorm2d"),
    "dropout": ("Dropout",),
    "activation": ("ReLU", "GELU", "Tanh", "Sigmoid", "Softmax", "LeakyReLU", "ELU"),
    "pooling": ("MaxPool1d", "MaxPool2d", "AvgPool1d", "AdaptiveMaxPool1d", "AdaptiveAvgPool1d"),
    "flatten": ("Flatten",),
    "container": ("Sequential", "ModuleList", "ModuleDict", "ParameterList", "ParameterDict"),
    "loss": ("CrossEntropyLoss", "BCEWithLogitsLoss", "BCELoss", "MSELoss", "NLLLoss"),
}
_LAYERS = frozenset(f"torch.nn.modules.{m}.{c}" for m, cs in _TORCH_LAYERS.items() for c in cs)
_CLASS_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", re.ASCII)
_MAX_PATH = 200

_lock = threading.Lock()
_paths = _LAYERS  # replaced whole, never mutated: readers need no lock
_families_added = False


def module_class_paths() -> frozenset[str]:
    """Every class path that loads as an inert module record.

    Returns:
        The historical class paths (the families' and those registered) and the allowed torch layers.
    """
    global _families_added
    if not _families_added:
        register_historical_class_paths(hooks.family_class_paths())
        _families_added = True
    return _paths


def register_historical_class_paths(paths: Iterable[str]) -> None:
    """Allow pickled instances of more legacy model classes (a family's historical class paths).

    Registering a path again is harmless; nothing is ever unregistered (the reader's stub classes are cached).

    Args:
        paths: fully qualified class paths, `package.module.Class`.

    Raises:
        TypeError: a path is not a string (or `paths` is a single string, which would be read letter by letter).
        ValueError: a path is not a dotted Python name of at least a module and a class.
    """
    global _paths
    if isinstance(paths, str):
        raise TypeError("register_historical_class_paths takes a collection of class paths, not one string")
    new = []
    for path in paths:
        if not isinstance(path, str):
            raise TypeError(f"a class path must be a string, not {type(path).__name__}")
        if len(path) > _MAX_PATH or not _CLASS_PATH.fullmatch(path):
            raise ValueError(f"not a class path (package.module.Class): {path[:80]!r}")
        new.append(path)
    with _lock:
        _paths = _paths | frozenset(new)
