"""Equivalence runner: prove that a migrated checkpoint computes what the legacy one did.

Named `equivalence`, not `verify`, so that importing it can never rebind the API function
`athelas_migrate.verify` (Python sets a parent package's attribute to each imported submodule).

`run_verify(old, new, ...) -> VerifyReport` (see `runner.py` and docs/verify.md).
Importing this package does not import torch: `run_verify`, `render` and the
adapter registry are loaded on first use, so `athelas-migrate verify --help`
stays fast.
"""

from __future__ import annotations

from typing import Any

from .report import Check, OutputDiff, Section, VerifyReport

__all__ = ["Check", "OutputDiff", "Section", "VerifyReport", "register_adapter", "render", "run_verify"]


def __getattr__(name: str) -> Any:
    if name == "run_verify":
        from .runner import run_verify

        return run_verify
    if name == "render":
        from .terminal import render

        return render
    if name == "register_adapter":
        from .adapters import register_adapter

        return register_adapter
    raise AttributeError(name)

