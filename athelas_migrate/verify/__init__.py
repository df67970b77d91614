"""Equivalence runner: prove that a migrated checkpoint computes what the legacy one did.

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


class _CallablePackage(__import__("types").ModuleType):
    """`from athelas_migrate import verify` yields this package once it is imported (Python binds a
    submodule over a parent's attribute of the same name), so the package itself is the API function too:
    `verify(old, new, atol=1e-5, ...)` runs `run_verify`."""

    def __call__(self, old: Any, new: Any, atol: float = 1e-5, rtol: float = 0.0, **kwargs: Any) -> Any:
        import os

        from .runner import run_verify

        return run_verify(os.fspath(old), os.fspath(new), atol=atol, rtol=rtol, **kwargs)


__import__("sys").modules[__name__].__class__ = _CallablePackage
