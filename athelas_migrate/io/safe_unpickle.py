"""A pickle reader that never calls foreign code: the entry point of the restricted unpickler.

`find_class` never returns a callable from outside this package: torch's tensor rebuild functions
become constructors of lazy tensor records, a short reviewed allowlist of harmless classes becomes
converters to plain values, the reviewed class paths of whole legacy modules become inert `Stub`
records, and every other global is refused at the opcode that names it (`UnsafeCheckpointError`),
wherever its result would have gone: a global that is popped, kept only in the memo or hidden in an
object's `__dict__` is refused like one in the final object graph. Copyreg extension codes (EXT1/2/4),
which would bypass `find_class` through copyreg's process-wide cache, are refused before loading.

Beyond "no foreign code", the reader refuses to be abused by the pickle machinery itself (see
docs/safety.md): objects handed to the VM are immutable to it (`unpickling.records`), memo and MARK
abuse is caught by a pre-scan (`unpickling.opcodes`), the converters' work is charged to a budget
proportional to the pickle's size (`unpickling.limits`), and the conversion to plain values keeps shared
references shared, refusing cycles and deep nesting (`unpickling.plain`).

To allow a new class, see `unpickling.allowlist` (which table, and why the tables are explicit);
a model family's historical class paths go through `register_historical_class_paths`.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

from ..errors import AthelasError, InputError
from .unpickling.allowlist import classify, modern_name, resolve_global
from .unpickling.class_paths import module_class_paths, register_historical_class_paths
from .unpickling.limits import MAX_DEPTH, loading
from .unpickling.opcodes import prescan
from .unpickling.plain import to_plain
from .unpickling.records import DtypeName, StorageRec, Stub

__all__ = ["MAX_DEPTH", "SafeUnpickler", "Stub", "classify", "modern_name", "module_class_paths", "prescan",
           "register_historical_class_paths", "resolve_global", "unpickle"]


class SafeUnpickler(pickle.Unpickler):
    """Unpickler over a torch zip archive's `data.pkl`; storages resolve through `storage_for`."""

    def __init__(self, stream: io.BytesIO, storage_for: Any, legacy: bool = False):
        super().__init__(stream, encoding="utf-8")
        self._storage_for = storage_for
        self._legacy = legacy

    def find_class(self, module: str, name: str) -> Any:
        """GLOBAL, STACK_GLOBAL, INST and OBJ all come here: refuse anything off the allowlist at once.

        Args:
            module: the pickled module name (historical names are mapped to modern ones).
            name: the class or function name.

        Returns:
            The sealed converter, marker or inert stub class the allowlist maps the name to.

        Raises:
            InputError: (from `resolve_global`) a name off the allowlist.
        """
        return resolve_global(*modern_name(str(module), str(name)))

    def persistent_load(self, pid: Any) -> Any:
        """Only torch storages: ('storage', type, key, location, numel), plus a view field (always None
        in practice) in the legacy pre-zip format. PERSID's text ids and anything else are refused.

        Args:
            pid: the persistent id.

        Returns:
            The storage record (or, in the pre-zip format, the module class it names).

        Raises:
            InputError: any other persistent id, or a malformed storage record.
        """
        if self._legacy and isinstance(pid, tuple) and len(pid) == 4 and pid[0] == "module":
            # the pre-zip format names each module class once this way (with its source, ignored)
            if isinstance(pid[1], type) and issubclass(pid[1], Stub) and pid[1].kind == "module":
                return pid[1]
            raise InputError(f"malformed checkpoint: unexpected module record {pid[1]!r:.80}")
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise InputError(f"malformed checkpoint: unexpected persistent id {pid!r:.80}")
        if len(pid) == 6 and pid[5] is not None:
            raise InputError("unsupported checkpoint: a legacy storage view (torch < 0.4); re-save it with a "
                             "newer torch in a trusted environment")
        _, dtype, key, _location, numel = pid[:5]
        if not isinstance(dtype, DtypeName) or dtype.startswith("torch."):
            raise InputError(f"malformed checkpoint: unknown storage type {dtype!r:.80}")
        if not isinstance(key, str | int) or not isinstance(numel, int) or numel < 0:
            raise InputError(f"malformed checkpoint: bad storage record {pid!r:.80}")
        ref = self._storage_for(str(key), str(dtype), numel)
        return ref if isinstance(ref, StorageRec) else StorageRec(ref)


def unpickle(data: bytes, storage_for: Any, legacy: bool = False) -> Any:
    """Load a pickle safely and convert every record into plain Python values and TensorRefs.

    Args:
        data: the whole pickle.
        storage_for: `(key, dtype, numel) -> StorageRef`, for each storage the pickle references.
        legacy: the pickle is the object pickle of the legacy (pre-zip) format.

    Returns:
        Plain values, TensorRefs and, for a pickled legacy model, module stubs (`unpickling.plain.to_plain`).

    Raises:
        UnsafeCheckpointError: the first refused global, and where it was (a byte offset of the pickle, or
            a key path for module records outside a pickled module).
        InputError: anything malformed (one line).
    """
    prescan(data)
    stream = io.BytesIO(data)
    with loading(len(data), stream):
        try:
            raw = SafeUnpickler(stream, storage_for, legacy).load()
        except AthelasError:
            raise
        except RecursionError as exc:
            raise InputError("not a checkpoint: the pickle nests too deeply") from exc
        except MemoryError as exc:
            raise InputError("refused: the pickle needs more memory than its size justifies") from exc
        except Exception as exc:  # any malformed pickle: EOF, bad opcodes, wrong arities
            raise InputError(f"not a readable checkpoint: corrupted pickle ({type(exc).__name__}: {exc})"[:300]) \
                from exc
    try:
        return to_plain(raw, "<root>")
    except AthelasError:
        raise
    except RecursionError as exc:
        raise InputError("not a checkpoint: the pickle nests too deeply") from exc
    except (ValueError, TypeError, OverflowError, IndexError, KeyError, AttributeError) as exc:
        raise InputError(f"malformed checkpoint: {type(exc).__name__}: {exc}"[:300]) from exc
