"""What each global a pickle names becomes: a sealed converter, a marker, an inert stub class, or a refusal.

`resolve_global` is the reader's whole `find_class`: it never returns a callable from outside this
package, and anything off these tables is refused at the opcode that names it. The tables, by kind:

- converters: torch's tensor rebuild functions (`rebuild.REBUILDS`), harmless classes rebuilt as plain
  values (`converters.CONVERTERS`), numpy scalars (`numpy_values.CONVERTERS`);
- names: torch dtypes and storage classes (`DtypeName`), `torch.Tensor`/`Parameter` (markers), the bases
  of `copyreg._reconstructor`;
- stub classes: Lightning's AttributeDicts and `argparse.Namespace` (become dicts), numpy dtypes and arrays,
  and whole legacy modules (`class_paths.module_class_paths()`).

To allow a new class, add it to the table of its kind, in the module that owns the kind; each entry is
reviewed, which is why the tables are explicit lists and never prefixes or imports.
"""

from __future__ import annotations

import _compat_pickle
from typing import Any

from ...errors import UnsafeCheckpointError
from ..tensor_ref import STORAGE_CLASS_TO_DTYPE
from .class_paths import module_class_paths
from .converters import CONVERTERS
from .limits import refuse
from .numpy_values import CONVERTERS as NUMPY_CONVERTERS
from .numpy_values import is_numpy_stub
from .rebuild import REBUILDS
from .records import BASES, PARAMETER_TYPE, TENSOR_TYPE, DtypeName, SealedCallable, stub_class

_CALLABLES: dict[str, Any] = {k: SealedCallable(k, v)
                              for k, v in {**REBUILDS, **CONVERTERS, **NUMPY_CONVERTERS}.items()}
_CALLABLES.update({"torch._tensor.Tensor": TENSOR_TYPE, "torch.Tensor": TENSOR_TYPE,
                   "torch.nn.parameter.Parameter": PARAMETER_TYPE})
_TORCH_DTYPES = {
    "float32", "float", "float64", "double", "float16", "half", "bfloat16", "int64", "long", "int32",
    "int", "int16", "short", "int8", "uint8", "bool", "complex64", "complex128",
    # dtypes the reader does not decode: named (inert strings) so `rebuild_tensor_v3` can say so clearly
    "uint16", "uint32", "uint64", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
    "complex32", "chalf", "cfloat", "cdouble",
}
# A pickled LightningModule's `_hparams`: a dict subclass, loaded as a dict.
_ATTRIBUTE_DICTS = {
    "lightning.fabric.utilities.data.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
    "pytorch_lightning.utilities.parsing.AttributeDict",
    "lightning.pytorch.utilities.parsing.AttributeDict",
}


def modern_name(module: str, name: str) -> tuple[str, str]:
    """The Python 3 name of a global, as pickle's own `find_class` maps it for protocols < 3.

    torch.save writes protocol 2, in which Python 3 writes Python 2 names (`__builtin__.set`,
    `copy_reg._reconstructor`, `commands.Popen`).

    Args:
        module: the module the pickle names.
        name: the name the pickle names.

    Returns:
        (module, name) under Python 3.
    """
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def resolve_global(module: str, name: str) -> Any:
    """What the pickle's GLOBAL `module.name` becomes, before the VM can use it.

    Args:
        module: the global's module (already mapped by `modern_name`).
        name: the global's name.

    Returns:
        A sealed converter, a marker, a DtypeName, or an inert stub class of an allowlisted class.

    Raises:
        UnsafeCheckpointError: anything else.
    """
    classpath = f"{module}.{name}"
    if classpath in _CALLABLES:
        return _CALLABLES[classpath]
    if module == "torch" and name in STORAGE_CLASS_TO_DTYPE:
        return DtypeName(STORAGE_CLASS_TO_DTYPE[name])
    if module in ("torch", "torch.storage") and name == "UntypedStorage":
        return DtypeName("uint8")
    if module == "torch" and name in _TORCH_DTYPES:
        return DtypeName(f"torch.{name}")
    if classpath in BASES:
        return BASES[classpath]
    if classpath in _ATTRIBUTE_DICTS:
        return stub_class(classpath, "attrdict")
    if classpath == "argparse.Namespace":
        return stub_class(classpath, "namespace")
    if is_numpy_stub(module, name):
        return stub_class(classpath, "numpy")
    if classpath in module_class_paths():
        return stub_class(classpath, "module")
    raise refuse(classpath[:200])


def classify(module: str, name: str) -> str:
    """How the reader treats the global `module.name` (for audits and tests).

    Args:
        module: the global's module, as a pickle names it (Python 2 names are mapped).
        name: the global's name.

    Returns:
        'converter', 'dtype', 'tensor-type', a stub kind ('module', 'attrdict', 'namespace', 'numpy'),
        or 'refused'.
    """
    try:
        obj = resolve_global(*modern_name(module, name))
    except UnsafeCheckpointError:
        return "refused"
    if isinstance(obj, SealedCallable):
        return "converter"
    if isinstance(obj, DtypeName):
        return "dtype"
    return getattr(obj, "kind", "tensor-type")
