"""The pre-scan: the pickle's opcodes walked without executing them, before the pickle VM runs.

Some abuse happens inside the C unpickler, before any `find_class` call could refuse it: `LONG_BINPUT
0xffffffff` makes it grow its memo table to twice the index and clear it (a 64 GiB allocation), and
copyreg extension codes (EXT1/2/4) name globals through copyreg's process-wide cache without calling
`find_class`. So every pickle is scanned first: extension codes are refused, memo indexes must lie
within the opcodes seen so far, and memo entries and MARK nesting are bounded. To watch another opcode,
add it to a `_..._OPS` set and handle it in `prescan`'s watched branch.
"""

from __future__ import annotations

import pickletools
from typing import Any

from ...errors import AthelasError, InputError, UnsafeCheckpointError
from . import limits


def _opcode_table() -> list[int | None]:
    """Argument length per opcode byte: >= 0 fixed; -2/-3/-4/-5 counted (1, 4 signed, 4, 8 bytes);
    -1 one line, -6 two lines (GLOBAL, INST)."""
    table: list[int | None] = [None] * 256
    for op in pickletools.opcodes:
        n = op.arg.n if op.arg is not None else 0
        table[ord(op.code)] = -6 if op.name in ("GLOBAL", "INST") else n
    return table


_OPCODES = _opcode_table()
_LONG_BINPUT, _PUT, _STOP, _MARK = ord("r"), ord("p"), ord("."), ord("(")
_MEMO_OPS = frozenset(b"pqr\x94")  # PUT, BINPUT, LONG_BINPUT, MEMOIZE
_MARK_OPS = frozenset(b"tldeu\x90\x91io1")  # what consumes a MARK: TUPLE ... POP_MARK
_EXT_OPS = frozenset(b"\x82\x83\x84")  # EXT1/2/4: copyreg's extension cache answers without find_class
_WATCHED = _MEMO_OPS | _MARK_OPS | _EXT_OPS | {_MARK}


def _line_end(data: Any, i: int) -> int:
    j = data.find(b"\n", i)
    if j < 0:
        raise ValueError("a text argument without its newline")
    return j


def prescan(data: Any, start: int = 0) -> int:
    """Check a pickle's opcodes without executing them.

    A tight loop rather than `pickletools.genops`, which is 3x slower.

    Args:
        data: bytes, or an mmap (pickles inside a larger file, the legacy format).
        start: the offset of the pickle's first opcode.

    Returns:
        The offset just past the pickle's STOP.

    Raises:
        UnsafeCheckpointError: a copyreg extension code.
        InputError: a memo index no real pickle uses, more than MAX_MEMO memo entries, MARKs nested deeper
            than MAX_DEPTH, or a corrupted pickle (unknown opcode, truncated argument, no STOP).
    """
    max_depth, max_memo = limits.MAX_DEPTH, limits.MAX_MEMO
    table, end, i, ops, memo, marks = _OPCODES, len(data), start, 0, 0, 0
    from_bytes = int.from_bytes
    try:
        while i < end:
            op = data[i]
            i += 1
            ops += 1
            n = table[op]
            if n is None:
                raise ValueError(f"unknown opcode {op:#04x} at byte {i - 1}")
            if op in _WATCHED:
                if op == _MARK:
                    marks += 1
                    if marks > max_depth:
                        raise InputError(f"not a checkpoint: the pickle nests deeper than {max_depth} levels")
                elif op in _MARK_OPS:
                    marks -= 1
                elif op in _MEMO_OPS:
                    memo += 1
                    if memo > max_memo:
                        raise InputError(f"refused: the pickle has more than {max_memo} memo entries")
                else:
                    raise UnsafeCheckpointError(f"copyreg extension code (opcode {op:#04x})",
                                                f"byte {i - 1} of its pickle")
            if n >= 0:
                if op == _LONG_BINPUT and from_bytes(data[i : i + 4], "little") > ops:
                    raise InputError(f"malformed checkpoint: pickle memo index "
                                     f"{from_bytes(data[i : i + 4], 'little')} out of range")
                i += n
            elif n == -2:
                i += 1 + data[i]
            elif n in (-3, -4):
                length = from_bytes(data[i : i + 4], "little", signed=n == -3)
                if length < 0:
                    raise ValueError("negative length")
                i += 4 + length
            elif n == -5:
                i += 8 + from_bytes(data[i : i + 8], "little")
            else:
                j = _line_end(data, i)
                if op == _PUT and not 0 <= int(data[i:j]) <= ops:
                    raise InputError(f"malformed checkpoint: pickle memo index {data[i:j][:20]!r} out of range")
                if n == -6:
                    j = _line_end(data, j + 1)
                i = j + 1
            if op == _STOP:
                return i
        raise ValueError("the pickle ends without STOP")
    except AthelasError:
        raise
    except (ValueError, IndexError) as exc:  # truncated argument, unknown opcode
        raise InputError(f"not a readable checkpoint: corrupted pickle ({exc})"[:300]) from exc
