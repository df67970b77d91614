"""What the pickle VM is handed instead of real classes: inert records and sealed wrappers.

Every object `find_class` or `persistent_load` returns is one of these. None of them runs foreign code,
and the VM cannot modify them: `BUILD` on a converter, a storage or a tensor record fails, so a pickle
cannot re-point a storage at another file or patch a converter. A `Stub` only records what the pickle
gave it (args, state, items). A new kind of record must keep both properties: no `__dict__` the VM can
write into (use `__slots__` or a tuple), and no method that does more than store data.
"""

from __future__ import annotations

import functools
import operator
from typing import Any, NamedTuple

from ...errors import InputError
from ..tensor_ref import StorageRef
from .limits import MAX_NDIM, charge, cost


class Stub:
    """An inert record of an object of an allowlisted class: args, state, items. Never constructed."""

    classpath = "?"
    kind = "module"

    def __new__(cls, *args: Any, **kwargs: Any) -> Stub:
        charge(cost(args))
        obj = object.__new__(cls)
        obj.args, obj.state, obj.items, obj.list = args, None, {}, []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # REDUCE calls cls(*args): record only
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        charge(1)
        self.items[key] = value

    def append(self, value: Any) -> None:
        """Record pickle's APPEND (charged against the record budget).

        Args:
            value: the item the pickle appends.
        """
        charge(1)
        self.list.append(value)

    def extend(self, values: Any) -> None:
        """Record pickle's APPENDS (charged against the record budget).

        Args:
            values: the items the pickle appends (any iterable; consumed once).
        """
        values = list(values)
        charge(1 + len(values))
        self.list.extend(values)

    def __repr__(self) -> str:
        return f"<{self.kind} {self.classpath}>"


@functools.lru_cache(maxsize=256)  # keys are allowlisted class paths only; the bound is a second line
def stub_class(classpath: str, kind: str) -> type:
    """The Stub subclass that stands for an allowlisted class (one per class path, cached).

    Args:
        classpath: the allowlisted class path the pickle names.
        kind: how `plain` converts its records: 'module', 'attrdict', 'namespace' or 'numpy'.

    Returns:
        A subclass of Stub.
    """
    return type(classpath.rsplit(".", 1)[-1], (Stub,), {"classpath": classpath, "kind": kind})


class DtypeName(str):
    """A torch dtype or storage class named in the pickle (`torch.float32`, `torch.FloatStorage`)."""

    __slots__ = ()  # no __dict__: BUILD cannot shadow its methods


class Sealed:
    """Base of what the pickle VM may hold but must not modify: BUILD (`__setstate__`) is refused."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise InputError("refused: the pickle tries to modify an internal object of the reader (BUILD)")


class SealedCallable(Sealed):
    """An allowlisted converter as the pickle sees it: callable, immutable, its work charged to the budget."""

    __slots__ = ("classpath", "_fn")

    def __init__(self, classpath: str, fn: Any) -> None:
        object.__setattr__(self, "classpath", classpath)
        object.__setattr__(self, "_fn", fn)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(name)

    def __call__(self, *args: Any) -> Any:
        charge(cost(args))
        return self._fn(*args)

    def __repr__(self) -> str:
        return f"<converter {self.classpath}>"


class Base(Sealed):
    """`builtins.object` / `builtins.dict` as the `base` argument of `copyreg._reconstructor`: a name,
    not callable; anywhere else in the graph it is refused like any class."""

    __slots__ = ("classpath",)

    def __init__(self, classpath: str) -> None:
        object.__setattr__(self, "classpath", classpath)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(name)


BASES = {c: Base(c) for c in ("builtins.object", "builtins.dict")}


class StorageRec(NamedTuple):
    """A storage as the pickle VM sees it (a tuple: no __dict__, so BUILD cannot re-point it)."""

    ref: StorageRef


class TensorRec(NamedTuple):
    """A tensor as the pickle VM sees it; becomes a TensorRef once the whole pickle is checked."""

    storage: StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    requires_grad: bool
    is_parameter: bool


TENSOR_TYPE = object()  # `torch.Tensor` as `_rebuild_from_type_v2` names it
PARAMETER_TYPE = object()  # `torch.nn.Parameter`, likewise


def int_tuple(seq: Any, what: str) -> tuple[int, ...]:
    """A shape or stride from the pickle, checked.

    Args:
        seq: what the pickle gave.
        what: its name, for the message.

    Returns:
        The integers, as a tuple.

    Raises:
        InputError: not a tuple or list of at most MAX_NDIM integers.
    """
    if not isinstance(seq, tuple | list) or len(seq) > MAX_NDIM:
        raise InputError(f"malformed checkpoint: a tensor {what} is not a tuple of at most {MAX_NDIM} integers")
    try:
        return tuple(map(operator.index, seq))
    except TypeError:
        raise InputError(f"malformed checkpoint: a tensor {what} holds a non-integer") from None
