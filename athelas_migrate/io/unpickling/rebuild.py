"""torch's tensor rebuild functions, reimplemented as constructors of tensor records.

A pickled tensor is a call `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`; these
functions take the same arguments and return a `TensorRec` (a tuple), never a tensor, so nothing of torch
runs and the view is checked against its storage only once the whole pickle is loaded (`plain`). A new
rebuild function torch adds gets a function here and an entry in `REBUILDS`.
"""

from __future__ import annotations

import operator
from typing import Any

from ...errors import InputError
from ..tensor_ref import DTYPES, StorageRef
from .limits import refuse
from .records import PARAMETER_TYPE, TENSOR_TYPE, DtypeName, SealedCallable, StorageRec, TensorRec, int_tuple

_DTYPE_ALIASES = {"float": "float32", "double": "float64", "half": "float16", "long": "int64", "int": "int32",
                  "short": "int16"}


def rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                      backward_hooks: Any = None, metadata: Any = None) -> TensorRec:
    """`torch._utils._rebuild_tensor_v2`: a view of a typed storage.

    Args:
        storage: the storage record `persistent_load` returned.
        storage_offset: the view's offset, in elements.
        size: the view's shape.
        stride: the view's strides, in elements.
        requires_grad: whether autograd tracks it.
        backward_hooks: ignored (always empty in a checkpoint).
        metadata: ignored.

    Returns:
        The tensor record.

    Raises:
        InputError: the arguments are not those of a tensor.
    """
    if not isinstance(storage, StorageRec):
        raise InputError("malformed checkpoint: a tensor does not reference a storage record")
    shape, strides = int_tuple(size, "size"), int_tuple(stride, "stride")
    if len(shape) != len(strides):
        raise InputError("malformed checkpoint: a tensor's size and stride differ in length")
    return TensorRec(storage.ref, operator.index(storage_offset), shape, strides, bool(requires_grad), False)


def rebuild_tensor_v3(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any,
                      backward_hooks: Any, dtype: Any, metadata: Any = None) -> TensorRec:
    """`torch._utils._rebuild_tensor_v3`, which torch writes for dtypes without a legacy storage class: the
    storage is untyped (numel in bytes) and the dtype comes as an argument.

    Args:
        storage: as for `rebuild_tensor_v2`.
        storage_offset: as for `rebuild_tensor_v2`.
        size: as for `rebuild_tensor_v2`.
        stride: as for `rebuild_tensor_v2`.
        requires_grad: as for `rebuild_tensor_v2`.
        backward_hooks: as for `rebuild_tensor_v2`.
        metadata: as for `rebuild_tensor_v2`.
        dtype: the dtype, as `torch.<name>` resolved to a DtypeName.

    Returns:
        The tensor record, its storage retyped to `dtype`.

    Raises:
        InputError: an unsupported dtype, or a storage that does not hold whole elements of it.
    """
    rec = rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata)
    name = str(dtype).removeprefix("torch.") if isinstance(dtype, DtypeName) else None
    name = _DTYPE_ALIASES.get(name, name)
    if name not in DTYPES:
        what = getattr(dtype, "classpath", dtype)
        raise InputError(f"unsupported tensor dtype {what!s:.60} (supported: {', '.join(sorted(DTYPES))})")
    ref = rec.storage
    if ref.dtype != name:
        item = DTYPES[name][0]
        if ref.nbytes % item:
            raise InputError(f"malformed checkpoint: an untyped storage does not hold whole {name} elements")
        ref = StorageRef(dtype=name, numel=ref.nbytes // item, path=ref.path, offset=ref.offset, key=ref.key,
                         crc32=ref.crc32, data=ref.data, record=ref.record)
    return rec._replace(storage=ref)


def rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any, state: Any = None) -> TensorRec:
    """`torch._utils._rebuild_parameter` (and `..._with_state`): a tensor marked as a parameter.

    Args:
        data: the tensor record it wraps.
        requires_grad: whether autograd tracks it.
        backward_hooks: ignored.
        state: ignored (a parameter subclass's attributes).

    Returns:
        The tensor record, marked as a parameter.

    Raises:
        InputError: `data` is not a tensor record.
    """
    if not isinstance(data, TensorRec):
        raise InputError("malformed checkpoint: a parameter does not wrap a tensor")
    return data._replace(requires_grad=bool(requires_grad), is_parameter=True)


def rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    """`torch._tensor._rebuild_from_type_v2`: a tensor rebuilt by `func`, then cast to `new_type`.

    Args:
        func: the rebuild converter.
        new_type: `torch.Tensor` or `torch.nn.Parameter` (any subclass is refused).
        args: the arguments of `func`.
        state: ignored.

    Returns:
        The tensor record.

    Raises:
        UnsafeCheckpointError: a tensor subclass.
        InputError: anything but a rebuild converter producing a tensor record.
    """
    if new_type not in (TENSOR_TYPE, PARAMETER_TYPE):
        name = getattr(new_type, "classpath", None) or f"{new_type!r:.60}"
        raise refuse(f"tensor subclass {name}")
    if not isinstance(func, SealedCallable) or not isinstance(args, tuple):
        raise InputError("malformed checkpoint: a tensor is rebuilt by an unexpected function")
    out = func(*args)
    if not isinstance(out, TensorRec):
        raise InputError("malformed checkpoint: a tensor is rebuilt as something else")
    return out._replace(is_parameter=out.is_parameter or new_type is PARAMETER_TYPE)


#: class path -> tensor-record constructor, for `allowlist`.
REBUILDS: dict[str, Any] = {
    "torch._utils._rebuild_tensor_v2": rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": rebuild_parameter,
    "torch._tensor._rebuild_from_type_v2": rebuild_from_type_v2,
}
