"""athelas-migrate: checkpoint migration and backward compatibility for the athelas Lightning models.

The public API is imported lazily so that `athelas-migrate --help` and rename-only
migrations never pay for importing torch or Lightning. No submodule may share an API name:
importing `athelas_migrate.<name>` would rebind the attribute to the module (which is why the
equivalence runner's package is `equivalence`, not `verify`).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["migrate", "verify", "audit", "inspect", "load_model", "infer_rules", "apply_rules", "RuleInferenceError",
           "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("migrate", "verify", "audit", "inspect", "load_model"):
        from . import api

        return getattr(api, name)
    if name in ("infer_rules", "apply_rules", "RuleInferenceError"):
        from . import infer

        return getattr(infer, name)
    raise AttributeError(name)
