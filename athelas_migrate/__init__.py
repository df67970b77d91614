"""athelas-migrate: checkpoint migration and backward compatibility for the athelas Lightning models.

The public API is imported lazily so that `athelas-migrate --help` and rename-only
migrations never pay for importing torch or Lightning. No submodule may share an API name:
importing `athelas_migrate.<name>` would rebind the attribute to the module (which is why the
equivalence runner's package is `equivalence`, not `verify`). To add a public name, list it in `__all__`
and in `__getattr__`, which imports the module defining it on first use.
"""

from __future__ import annotations

from typing import Any

from . import hooks
from ._version import __version__

__all__ = ["migrate", "verify", "audit", "inspect", "load_model", "infer_rules", "apply_rules", "RuleInferenceError",
           "__version__"]


def _read_checkpoint_dict(source: Any, overrides: Any = None, cls: type | None = None) -> dict[str, Any]:
    """The engine's reader, imported when a model first loads a file (see athelas_migrate.hooks)."""
    from .materialise import read_checkpoint_dict

    return read_checkpoint_dict(source, overrides, cls)


def _family_class_paths() -> list[str]:
    """Every family's historical class paths (the restricted reader's whole-module allowlist)."""
    from .families import FAMILIES

    return [path for fam in FAMILIES.values() for path in fam.historical_classes]


hooks.install_checkpoint_reader(_read_checkpoint_dict)
hooks.install_class_path_source(_family_class_paths)


def __getattr__(name: str) -> Any:
    if name in ("migrate", "verify", "audit", "inspect", "load_model"):
        from . import api

        return getattr(api, name)
    if name in ("infer_rules", "apply_rules", "RuleInferenceError"):
        from . import infer

        return getattr(infer, name)
    raise AttributeError(name)
