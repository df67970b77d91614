"""Where and how verify computes: the device, deterministic kernels, and the warnings they raise.

Everything here is set for one run and restored afterwards, so calling `run_verify` from a
program leaves its torch settings as they were. To add a setting, save it and restore it in
`deterministic` (the `finally` block), and say in `docs/verify.md` why it is needed.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator

import torch

from ..errors import UsageError
from .adapters import CannotVerifyError
from .report import VerifyReport


def resolve_device(device: str | None) -> torch.device:
    """The device to run on.

    Args:
        device: None, "" or "cpu"; "cuda" or "cuda:N"; "auto" (CUDA when available, else the CPU).

    Returns:
        The torch device.

    Raises:
        CannotVerifyError: CUDA was asked for and is not available.
        UsageError: any other value.
    """
    if device in (None, "", "cpu"):
        return torch.device("cpu")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda"):
        if not torch.cuda.is_available():
            raise CannotVerifyError(f"--device {device}: CUDA is not available on this machine")
        return torch.device(device)
    raise UsageError(f"--device must be cpu, cuda or auto, got {device!r}")


@contextlib.contextmanager
def deterministic(dev: torch.device) -> Iterator[None]:
    """TF32 off, deterministic kernels, no cuDNN autotuning; everything restored afterwards.

    Args:
        dev: the device verify runs on (CUDA also gets a deterministic cuBLAS workspace).

    Yields:
        Nothing; the body runs with the deterministic settings.
    """
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.get_float32_matmul_precision())
    if dev.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.set_float32_matmul_precision("highest")
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) = saved[:4]
        torch.use_deterministic_algorithms(saved[4], warn_only=saved[5])
        torch.set_float32_matmul_precision(saved[6])


def note_warnings(report: VerifyReport, caught: list[warnings.WarningMessage]) -> None:
    """Kernels without a deterministic implementation become a report note; other warnings are re-issued.

    Args:
        report: the report that receives the note.
        caught: the warnings recorded while verifying.
    """
    nondeterministic = set()
    for w in caught:
        text = str(w.message)
        if "does not have a deterministic implementation" in text:
            nondeterministic.add(text.split(" does not have")[0])
        elif issubclass(w.category, DeprecationWarning) and "migrated in memory" in text:
            continue
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if nondeterministic:
        report.notes.append("kernels without a deterministic implementation ran (results compared at the same "
                            f"tolerance): {', '.join(sorted(nondeterministic))}")
