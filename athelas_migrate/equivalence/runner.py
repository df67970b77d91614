"""`run_verify(OLD, NEW)`: prove that the refactored model computes what the legacy one did.

The OLD side never goes through the migration rules: its model is the `legacy/` class of its layout,
built from OLD's own config and tensors; the NEW side is the refactored class loaded from NEW. The
rename map (OLD's keys through the rules) only pairs parameters, gradients, buffers and modules.

`_verify` runs the sections in order, one module each: build (`pairing`, `build`), weights
(`weights`), outputs and stored outputs (`forward`), domain (`domain`), training (`training`).
See docs/verify.md. To add a check, write a function that takes the report and the `Pair` (and the
batches if it runs the models), appends its `Section`, and call it from `_verify`; a check a user
may opt out of also goes into SKIPPABLE (and the CLI's `--skip-check` choices).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterable
from typing import Any

import torch

from ..errors import EXIT_INTERNAL, AthelasError, UsageError
from .adapters import Batch
from .build import SMALL_MODEL, build_models
from .domain import run_domain
from .environment import deterministic, note_warnings, resolve_device
from .forward import eval_sections, make_batches
from .pairing import DTYPE_TOLERANCE, SHAPE_KEYS, Pair, open_pair
from .report import SKIP, Check, Section, VerifyReport
from .training import run_training
from .weights import weights_section

__all__ = ["DTYPE_TOLERANCE", "SHAPE_KEYS", "SKIPPABLE", "SMALL_MODEL", "run_verify"]

#: checks a user may opt out of (`--skip-check NAME`); anything else that cannot run is an error
SKIPPABLE = ("training", "domain", "optimizer")


def run_verify(old: str | os.PathLike[str], new: str | os.PathLike[str], atol: float = 1e-5, rtol: float = 0.0,
               overrides: dict[str, Any] | None = None, seed: int = 0, inputs: Any = None,
               device: str | None = None, json_path: str | os.PathLike[str] | None = None,
               junit_path: str | os.PathLike[str] | None = None, *, reference: Any = None,
               training: bool = True, domain: bool = True, localisation: bool = True,
               threads: int | None = None, skip: Iterable[str] = (),
               modules: bool = False) -> VerifyReport:
    """Compare the legacy model of OLD with the refactored model of NEW; see the module docstring.

    Args:
        old: the legacy checkpoint.
        new: its migration (a checkpoint of the same family, any layout).
        atol: absolute tolerance (raised to a floor for float16/bfloat16 weights).
        rtol: relative tolerance: |new - old| <= atol + rtol * |old|.
        overrides: hyper-parameters OLD lacks (as `--set`/`--config`/`--bert-config` give them).
        seed: seed of the generated inputs.
        inputs: a path (or loaded object) of real batches used instead of generated ones.
        device: None/"cpu", "cuda" (refused when unavailable) or "auto".
        json_path: write the report as JSON here (also when the run fails or cannot run).
        junit_path: write the report as JUnit XML here (likewise).
        reference: a path (or object) in the `.io.pt` format whose stored legacy outputs are checked in
            addition to the generated batches (the gate passes each fixture's `.io.pt`).
        training: False is the same as skipping "training".
        domain: False is the same as skipping "domain".
        localisation: name the first divergent module when outputs differ.
        threads: CPU threads for torch while verifying; None: one thread for small models (below
            SMALL_MODEL parameters, where intra-op parallelism only costs), torch's setting otherwise.
        skip: checks the caller opts out of (SKIPPABLE); each is recorded as `skipped` by request.
        modules: also record every aligned module's output difference (`outputs.summary["modules"]`, for
            the HTML report); a failing run records them in `localisation["modules"]` regardless.

    Returns:
        The report (`report.passed`, `report.exit_code`).

    Raises:
        UsageError: a bad tolerance, device or skip name; OLD already at the latest layout.
        AthelasError: an input refused or a pair that cannot be compared (exit code on the exception); the
            partial report is attached as `exc.report` and the report files are written first.
        Exception: a bug of this tool, with `exc.report` attached likewise (the CLI exits 70).
    """
    old, new = os.fspath(old), os.fspath(new)
    for name, v in (("atol", atol), ("rtol", rtol)):
        if not isinstance(v, int | float) or v < 0 or v != v:
            raise UsageError(f"--{name} must be a non-negative number, got {v!r}")
    skip = _skip_set(skip, training, domain)
    report = VerifyReport(old=old, new=new, atol=float(atol), rtol=float(rtol), seed=int(seed))
    t0 = time.perf_counter()
    prev_threads = torch.get_num_threads()
    try:
        dev = resolve_device(device)
        report.device = str(dev)
        with deterministic(dev), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _verify(report, old, new, dict(overrides or {}), inputs, reference, dev, skip, localisation, threads,
                    modules)
        note_warnings(report, caught)
    except AthelasError as exc:
        report.error, report.error_code = str(exc), exc.exit_code
        exc.report = report  # the partial report, for callers that collect them (the gate)
        raise
    except Exception as exc:  # a bug in this tool: the CLI reports it with exit 70 like every command
        report.error, report.error_code = f"internal error: {type(exc).__name__}: {exc}", EXIT_INTERNAL
        exc.report = report
        raise
    finally:
        torch.set_num_threads(prev_threads)
        report.duration_s = time.perf_counter() - t0
        if json_path:
            report.write_json(json_path)
        if junit_path:
            report.write_junit(junit_path)
    return report




def _skip_set(skip: Iterable[str], training: bool, domain: bool) -> set[str]:
    names = {skip} if isinstance(skip, str) else set(skip or ())
    unknown = sorted(names - set(SKIPPABLE))
    if unknown:
        raise UsageError(f"--skip-check {', '.join(unknown)}: unknown check (one of {', '.join(SKIPPABLE)})")
    return names | ({"training"} if not training else set()) | ({"domain"} if not domain else set())


def _skipped(report: VerifyReport, name: str, title: str) -> None:
    """An opted-out section stays visible in every report form, as `skipped` by request."""
    report.sections.append(Section(name, title, [Check(name, SKIP, f"skipped by request (--skip-check {name})")]))


def _verify(report: VerifyReport, old: str, new: str, overrides: dict[str, Any], inputs: Any, reference: Any,
            dev: torch.device, skip: set[str], localisation: bool, threads: int | None,
            modules: bool = False) -> None:
    """The sections, in order (the arguments are run_verify's, validated)."""
    pair = open_pair(report, old, new, overrides, dev)
    build_models(report, pair, threads)
    weights_section(report, pair)
    batches, stored = make_batches(report, pair, inputs)
    eval_sections(report, pair, batches, stored, reference, localisation, modules)
    if "domain" in skip:
        _skipped(report, "domain", "Sequence-length domain of the text branch")
    else:
        _domain_section(report, pair)
    if "training" in skip:
        _skipped(report, "training", "Training equivalence")
    else:
        _training_section(report, pair, batches, skip_optimizer="optimizer" in skip)


def _domain_section(report: VerifyReport, pair: Pair) -> None:
    """The text branch's sequence lengths, or the family's own input-domain traps, or a note why neither."""
    adapter, ctx, atol, rtol = pair.adapter, pair.ctx, pair.atol, pair.rtol
    if adapter.has_text:
        sec = Section("domain", "Sequence-length domain of the text branch")
        run = lambda: run_domain(ctx, adapter, sec, atol, rtol)  # noqa: E731
    elif hasattr(adapter, "domain_checks"):  # a family's own input-domain traps (e.g. Names3Risk)
        sec = Section("domain", "Input domain (the family's traps)")
        run = lambda: adapter.domain_checks(ctx, sec, atol, rtol)  # noqa: E731
    else:
        if getattr(adapter, "domain_note", None):
            report.notes.append(adapter.domain_note)  # say plainly why there is no domain section
        return
    report.sections.append(sec)
    t = time.perf_counter()
    run()
    sec.duration_s = time.perf_counter() - t


def _training_section(report: VerifyReport, pair: Pair, batches: list[Batch], skip_optimizer: bool) -> None:
    """Loss, gradients and one optimizer step of both models on one batch (the random one, else the first)."""
    sec = Section("training", "Training equivalence")
    report.sections.append(sec)
    t = time.perf_counter()
    train_batch = next((b for b in batches if b.name == "random"), batches[0])
    run_training(pair.ctx, pair.adapter, train_batch, sec, pair.atol, pair.rtol, skip_optimizer=skip_optimizer)
    sec.duration_s = time.perf_counter() - t
