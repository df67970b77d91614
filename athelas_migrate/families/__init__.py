"""Registry of model families and detection of (family, layout version) with evidence.

To add a family: write its module here (a `Family` subclass per family, listed in the module's `FAMILIES`
tuple), add the module to the registry below, and add its rule files under `mappings/<Family>/`;
tests/test_families_complete.py lists what else it needs.
"""

from __future__ import annotations

from ..errors import UnknownLayoutError
from ..io.reader import RawCheckpoint
from . import bert, names3risk, tsa
from .base import Detection, Expected, Family, stamped_layout
from .cnn import BimodalCNNFamily, TabAEFamily, TextCNNFamily

#: Every known family by name. A family module lists its families in its own FAMILIES tuple; they are joined here
#: (the registry imports the family modules, never the other way round).
FAMILIES: dict[str, Family] = {f.name: f for f in (BimodalCNNFamily(), TextCNNFamily(), TabAEFamily(),
                                                   *bert.FAMILIES, *names3risk.FAMILIES, *tsa.FAMILIES)}


def register(family: Family) -> None:
    """Add (or replace) a family at run time, e.g. a plugin's; the bundled ones are listed in FAMILIES above."""
    FAMILIES[family.name] = family


def get_family(name: str) -> Family:
    """The family named `name`, matched case-insensitively; an unknown name lists the known ones."""
    fam = FAMILIES.get(name) or next((f for n, f in FAMILIES.items() if n.lower() == str(name).lower()), None)
    if fam is None:
        raise UnknownLayoutError(f"unknown family {name!r} (known: {', '.join(sorted(FAMILIES))})")
    return fam


def detect(raw: RawCheckpoint) -> Detection:
    """Family and layout version of `raw`: a layout stamp wins; otherwise keys, shapes and hyper-parameters."""
    stamped = stamped_layout(raw, FAMILIES)  # refuses malformed, unknown and newer stamps
    if stamped:
        return Detection(*stamped, [f"layout stamp athelas_migrate.layout={stamped[1]!r}"], 10)
    hits = [d for f in FAMILIES.values() if (d := f.detect(raw)) is not None]
    if not hits:
        sample = ", ".join(list(raw.state_dict)[:6]) or "no tensors"
        raise UnknownLayoutError(f"{raw.path}: matches no known model family (keys: {sample})")
    hits.sort(key=lambda d: -d.score)
    if len(hits) > 1 and hits[0].score == hits[1].score:
        raise UnknownLayoutError(f"{raw.path}: ambiguous: looks like both {hits[0].family} and {hits[1].family}")
    return hits[0]


__all__ = ["Detection", "Expected", "Family", "FAMILIES", "detect", "get_family", "register"]
