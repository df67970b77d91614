"""Rule inference: draft a rule file from an old and a new model, accepted only once proven.

`infer_rules(old, new, inputs, family=..., from_version=..., to_version=...)` returns the text of a
rule file; `apply_rules(text_or_path, state_dict)` applies any rule file with the engine. See
docs/rules.md.

A new inference strategy is a pass of `match.Matcher` (its module docstring says how); a new rule op that
inference should emit also needs its grouping in `collapse.py`.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["infer_rules", "apply_rules", "infer", "Inference", "RuleInferenceError"]


def __getattr__(name: str) -> Any:
    """Lazy: `athelas_migrate.infer.cli` (loaded with the CLI) must not import torch through this package."""
    if name in __all__:
        return getattr(importlib.import_module(".core", __name__), name)
    raise AttributeError(name)
