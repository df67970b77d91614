"""numpy values inside hyper-parameters (dtypes, scalars, arrays), rebuilt as plain Python values.

numpy is imported only when a pickle holds such a value. Only numeric dtypes are accepted: object,
string and structured dtypes are refused, so an array never carries Python objects. Scalars are
converted while loading (`CONVERTERS`); dtypes and arrays load as `numpy` stubs and are converted by
`plain` through `numpy_value`, once their BUILD state is known. To accept another numpy class path,
add it to `_STUBS` (a record) or `CONVERTERS` (rebuilt from its arguments) and handle it here.
"""

from __future__ import annotations

import re
from typing import Any

from ...errors import InputError, UnsafeCheckpointError
from .limits import MAX_ARRAY
from .records import Stub, int_tuple

_CODE = re.compile(r"^[<>=|]?[biufc?]\d{0,2}$")
_STUBS = frozenset({"numpy.dtype", "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
                    "numpy.ndarray"})


def is_numpy_stub(module: str, name: str) -> bool:
    """Whether the global `module.name` loads as a numpy stub (dtype and array records).

    Args:
        module: the global's module.
        name: the global's name.

    Returns:
        True for `numpy.dtype`, the array reconstructors and numpy's per-dtype classes (`numpy.dtypes.*DType`).
    """
    return f"{module}.{name}" in _STUBS or (module == "numpy.dtypes" and name.endswith("DType") and name.isalnum()
                                           and len(name) <= 32)


def _numpy_dtype(stub: Any, path: str | None = None) -> Any:
    """A numeric numpy dtype from its stub; object, string and structured dtypes are refused."""
    import numpy as np

    code = stub.args[0] if isinstance(stub, Stub) and stub.kind == "numpy" and stub.args else None
    if not isinstance(code, str) or not _CODE.match(code):
        if path is None:  # while loading: the key path is not known yet
            raise InputError(f"refused: a numpy value of dtype {code!r:.40} (only numeric dtypes are accepted)")
        raise UnsafeCheckpointError(f"numpy.dtype({code!r:.40})", path)
    dt = np.dtype(code)
    order = stub.state[1] if isinstance(stub.state, tuple) and len(stub.state) > 1 else "="
    if order in ("<", ">"):
        return dt.newbyteorder(order)
    return dt


def _numpy_scalar(dtype_stub: Any, data: Any = None) -> Any:
    import numpy as np

    if not isinstance(dtype_stub, Stub) or not isinstance(data, bytes | bytearray):
        raise InputError("malformed checkpoint: a numpy scalar without a dtype and bytes")
    dt = _numpy_dtype(dtype_stub)
    if len(data) != dt.itemsize:
        raise InputError("malformed checkpoint: a numpy scalar has the wrong number of bytes")
    return np.frombuffer(bytes(data), dtype=dt)[0].item()


#: class path -> converter, for `allowlist`.
CONVERTERS: dict[str, Any] = {
    "numpy.core.multiarray.scalar": _numpy_scalar,
    "numpy._core.multiarray.scalar": _numpy_scalar,
}


def numpy_value(stub: Stub, path: str) -> Any:
    """The plain value of a loaded numpy stub.

    Args:
        stub: a stub of kind 'numpy', its BUILD state set.
        path: its key path, for messages.

    Returns:
        A nested list for an array, the dtype's name (str) for a dtype.

    Raises:
        UnsafeCheckpointError: an array of Python objects, a non-numeric dtype, or an array built directly.
        InputError: an array too large for a hyper-parameter.
    """
    import numpy as np

    if stub.classpath.endswith("_reconstruct"):
        state = stub.state
        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], Stub)):
            raise UnsafeCheckpointError("numpy.ndarray (malformed)", path)
        _, shape, dtype_stub, fortran, raw = state
        if not isinstance(raw, bytes | bytearray):
            raise UnsafeCheckpointError("numpy.ndarray of Python objects", path)
        dt = _numpy_dtype(dtype_stub, path)
        shape = int_tuple(shape, "numpy array shape")
        if len(raw) // max(dt.itemsize, 1) > MAX_ARRAY:
            raise InputError(f"refused: the numpy array at {path} is too large for a hyper-parameter")
        arr = np.frombuffer(bytes(raw), dtype=dt)
        return arr.reshape(shape, order="F" if fortran else "C").tolist()
    if stub.classpath.endswith(".ndarray"):
        raise UnsafeCheckpointError("numpy.ndarray (constructed directly)", path)
    return str(_numpy_dtype(stub, path))
