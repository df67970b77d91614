"""The bounds a pickle may not make the reader exceed, and the work budget of one load.

The pickle VM itself is bounded by the pre-scan (`opcodes`), the converters and stubs by a budget
proportional to the pickle's size (memo references make "billion laughs" expansions cheap to write),
and the conversion to plain values by `MAX_DEPTH`. To change a bound, change its constant here: each
says what real checkpoints need, so a new one should too.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
from collections import OrderedDict
from collections.abc import Iterator

from ...errors import InputError, UnsafeCheckpointError

MAX_DEPTH = 100  # nesting of containers/records; real checkpoints stay below 30
MAX_NDIM = 64
MAX_TEXT = 1 << 16  # a path or device string longer than this is not a path
MAX_ARRAY = 1 << 24  # numpy arrays inside hyper-parameters, in elements
MAX_BROADCAST = 1 << 24  # elements a stride-0 (expanded) view may show beyond its storage
MAX_MEMO = 1 << 22  # memo entries; a 7B-parameter state dict uses about 10 per tensor
_BUDGET_PER_BYTE = 16
_BUDGET_BASE = 1 << 20

_SIZED = frozenset({str, bytes, bytearray, list, tuple, dict, set, frozenset, OrderedDict})


class _LoadContext:
    """One running load: what work is left, and the stream (for the byte offset of a refusal)."""

    def __init__(self, size: int, stream: io.BytesIO | None = None) -> None:
        self.budget = _BUDGET_PER_BYTE * size + _BUDGET_BASE
        self.stream = stream

    def where(self) -> str:
        """Where the pickle VM is, for a refusal that happens before any key path exists."""
        return f"byte {self.stream.tell()} of its pickle" if self.stream is not None else "its pickle"


_CTX: contextvars.ContextVar[_LoadContext | None] = contextvars.ContextVar("athelas_unpickle", default=None)


@contextlib.contextmanager
def loading(size: int, stream: io.BytesIO | None = None) -> Iterator[None]:
    """The budget and position of one load, for the converters the pickle VM calls meanwhile.

    Args:
        size: the pickle's length in bytes; the budget is proportional to it.
        stream: the stream the VM reads, so refusals can name a byte offset.

    Yields:
        Nothing; the load runs inside the block.
    """
    token = _CTX.set(_LoadContext(size, stream))
    try:
        yield
    finally:
        _CTX.reset(token)


def refuse(classpath: str) -> UnsafeCheckpointError:
    """The refusal of a global, naming where the pickle VM is.

    Args:
        classpath: what is refused, as the message should name it.

    Returns:
        The error to raise (UnsafeCheckpointError).
    """
    ctx = _CTX.get()
    return UnsafeCheckpointError(classpath, ctx.where() if ctx is not None else "its pickle")


def charge(n: int) -> None:
    """Take `n` units of work from the running load's budget (none outside a load).

    Args:
        n: units of work about to be done.

    Raises:
        InputError: the budget is spent: the pickle expands far beyond its own size.
    """
    ctx = _CTX.get()
    if ctx is not None:
        ctx.budget -= n
        if ctx.budget < 0:
            raise InputError("refused: the pickle expands far beyond its own size (a memory bomb?)")


def cost(args: tuple) -> int:
    """The work a call may do: its arguments, and the length of each container among them (a memo'd list
    passed a million times costs a million copies).

    Args:
        args: the positional arguments of the call.

    Returns:
        Units of work to charge.
    """
    n = 1 + len(args)
    for a in args:
        if type(a) in _SIZED:
            n += len(a)
    return n
