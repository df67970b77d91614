"""Rule inference: draft a rule file from an old and a new model, accepted only once proven.

`infer_rules(old, new, inputs, family=..., from_version=..., to_version=...)` returns the text of a
rule file; `apply_rules(text_or_path, state_dict)` applies any rule file with the engine. See
docs/rules.md.
"""

from __future__ import annotations

from .core import Inference, RuleInferenceError, apply_rules, infer, infer_rules

__all__ = ["infer_rules", "apply_rules", "infer", "Inference", "RuleInferenceError"]
