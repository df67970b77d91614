"""`run_verify(OLD, NEW)`: prove that the refactored model computes what the legacy one did.

The OLD side never goes through the migration rules: its model is the `legacy/`
class of its layout, built from the family's canonical config of OLD (plus the
user's overrides, falling back to NEW's hyper-parameters for what OLD does not
state) and loaded strictly from OLD's own tensors. The NEW side is the
refactored class loaded from NEW. The rename map (OLD's keys through the rules)
is used only to pair parameters, gradients, optimizer buffers and modules.

Sections: build, weights, outputs, stored (when stored legacy outputs are given),
domain (text branch sequence lengths), training. See docs/verify.md.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterable
from typing import Any

import torch

from ..errors import EXIT_INTERNAL, AthelasError, UsageError
from ..families import detect, get_family
from ..io.reader import read_checkpoint
from ..io.tensor_ref import TensorRef
from .adapters import Batch, CannotVerifyError, Context, get_adapter, known_families
from .compare import compare
from .domain import run_domain
from .inputs import load_inputs
from .localize import capture, localise, module_diffs, pair_modules
from .memory import compute_parameters, skip_init
from .report import ERROR, EXPECTED, FAIL, PASS, SKIP, Check, OutputDiff, Section, VerifyReport
from .training import run_training

#: floors of (atol, rtol) for weights stored in reduced precision (their unit roundoff, about)
DTYPE_TOLERANCE = {"float16": (1e-3, 1e-3), "bfloat16": (1e-2, 1e-2)}
SHAPE_KEYS = {"vocab_size", "embed_size", "input_tab_dim"}
SMALL_MODEL = 2_000_000  # parameters outside embedding tables; below this, one CPU thread is faster than several
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

    `inputs`: a path (or loaded object) of real batches used instead of generated ones.
    `reference`: a path (or object) in the `.io.pt` format whose stored legacy outputs are checked in
    addition to the generated batches (the gate passes each fixture's `.io.pt`).
    `device`: None/"cpu", "cuda" (refused when unavailable) or "auto".
    `skip`: checks the caller opts out of (SKIPPABLE); each is recorded as `skipped` by request.
    `training=False` / `domain=False` are the same as skipping "training" / "domain".
    `threads`: CPU threads for torch while verifying; None: one thread for small models (below
    SMALL_MODEL parameters, where intra-op parallelism only costs), torch's setting otherwise.
    `modules`: also record every aligned module's output difference (`outputs.summary["modules"]`, for the
    HTML report); a failing run records them in `localisation["modules"]` regardless.
    Raises AthelasError subclasses when it cannot run (the reports, if asked for, are written first).
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
        dev = _resolve_device(device)
        report.device = str(dev)
        with _deterministic(dev), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _verify(report, old, new, dict(overrides or {}), inputs, reference, dev, skip, localisation, threads,
                    modules)
        _note_warnings(report, caught)
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


# ------------------------------------------------------------------------ setup


def _skip_set(skip: Iterable[str], training: bool, domain: bool) -> set[str]:
    names = {skip} if isinstance(skip, str) else set(skip or ())
    unknown = sorted(names - set(SKIPPABLE))
    if unknown:
        raise UsageError(f"--skip-check {', '.join(unknown)}: unknown check (one of {', '.join(SKIPPABLE)})")
    return names | ({"training"} if not training else set()) | ({"domain"} if not domain else set())


def _skipped(report: VerifyReport, name: str, title: str) -> None:
    """An opted-out section stays visible in every report form, as `skipped` by request."""
    report.sections.append(Section(name, title, [Check(name, SKIP, f"skipped by request (--skip-check {name})")]))


def _resolve_device(device: str | None) -> torch.device:
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
def _deterministic(dev: torch.device):
    """TF32 off, deterministic kernels, no cuDNN autotuning; everything restored afterwards."""
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


def _note_warnings(report: VerifyReport, caught: list) -> None:
    """Kernels without a deterministic implementation become a report note; other warnings are re-issued."""
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


def _stated(hp: Any) -> dict[str, Any]:
    """The hyper-parameters a checkpoint states (a nested `config` flattened; tensors left out)."""
    if not isinstance(hp, dict):
        return {}
    out = {}
    if isinstance(hp.get("config"), dict):
        out.update(hp["config"])
    for k, v in hp.items():
        if k != "config":
            out[k] = v
    return {k: v for k, v in out.items() if not isinstance(v, TensorRef) and not hasattr(v, "shape")}


def _weights_dtype(raw) -> str:
    floats = [d for d in raw.dtypes if d.startswith(("float", "bfloat"))]
    for d in ("float16", "bfloat16", "float32", "float64"):
        if d in floats:
            return d
    return "float32"


# ------------------------------------------------------------------------ run


def _verify(report: VerifyReport, old: str, new: str, overrides: dict[str, Any], inputs: Any, reference: Any,
            dev: torch.device, skip: set[str], localisation: bool, threads: int | None,
            modules: bool = False) -> None:
    from ..materialise import build_v2_model
    from ..pipeline import plan_and_apply

    raw_old = read_checkpoint(old)
    det = detect(raw_old)
    fam = get_family(det.family)
    report.family, report.old_version = fam.name, det.version
    adapter = get_adapter(fam.name)
    if adapter is None:
        raise CannotVerifyError(f"no equivalence adapter for family {fam.name} (adapters: "
                                f"{', '.join(known_families())}); see docs/verify.md")
    if det.version == fam.latest:
        raise UsageError(f"OLD ({old}) is already a {fam.latest} checkpoint; verify compares a legacy "
                         "checkpoint (OLD) with its migration (NEW)")

    # ---- NEW: the refactored model, from NEW alone
    new_result = plan_and_apply(new, to=fam.latest, overrides=overrides)
    if new_result.family.name != fam.name:
        raise UsageError(f"OLD is a {fam.name} checkpoint but NEW is a {new_result.family.name} checkpoint")
    report.new_version = new_result.source_version
    if new_result.source_version != fam.latest:
        report.notes.append(f"NEW is a {new_result.source_version} checkpoint: migrated in memory to "
                            f"{fam.latest} for the comparison")
    raw_new = new_result.raw

    # ---- OLD: the legacy model, from OLD's own config and tensors
    fallback = {k: v for k, v in _stated(raw_new.hyper_parameters).items()
                if k not in _stated(raw_old.hyper_parameters) and k not in SHAPE_KEYS}
    eff = {**fallback, **overrides}
    try:
        config_old = fam.configure(raw_old, det.version, dict(eff))
    except UsageError as exc:
        if not fallback:
            raise
        raise CannotVerifyError(f"{exc} (values missing from OLD are taken from NEW's hyper-parameters: "
                                "are OLD and NEW the same model?)") from exc
    report.notes += [f"OLD: {n}" for n in det.notes + list(config_old.pop("_notes", []))]
    taken = sorted(k for k in fallback if k not in overrides)
    if taken:
        report.notes.append(f"taken from NEW's hyper-parameters (OLD does not state them): {', '.join(taken)}")
    if not config_old.get("label_name"):
        config_old["label_name"] = "label"
        report.notes.append("label_name is stated by neither file; 'label' is used (only labelled inputs "
                            "files need it)")
    map_result = plan_and_apply(old, to=fam.latest, overrides=eff, raw=raw_old)
    rename = {tr.source: tr.target for tr in map_result.traces if tr.target and ", " not in tr.target}
    ops = {tr.source: list(tr.ops) for tr in map_result.traces}
    report.notes.append("rename map (pairing only) from " + (", ".join(rf.name for rf in map_result.chain)
                                                             or "no rules"))

    wdt = _weights_dtype(raw_old)
    compute_dtype = torch.float64 if wdt == "float64" else torch.float32
    report.weights_dtype, report.compute_dtype = wdt, str(compute_dtype).removeprefix("torch.")
    atol, rtol = report.atol, report.rtol
    if wdt in DTYPE_TOLERANCE:
        fa, fr = DTYPE_TOLERANCE[wdt]
        atol, rtol = max(atol, fa), max(rtol, fr)
        report.tolerance_note = (f"{wdt} weights: both models run in float32 with the {wdt}-rounded weights; "
                                 f"compared at atol={atol:g}, rtol={rtol:g} (floor for {wdt})")
    else:
        report.tolerance_note = f"{wdt} weights, computed in {report.compute_dtype}: atol={atol:g}, rtol={rtol:g}"
    report.effective_atol, report.effective_rtol = atol, rtol
    new_wdt = _weights_dtype(raw_new)
    if new_wdt != wdt:
        report.notes.append(f"NEW stores {new_wdt} weights, OLD {wdt}")

    ctx = Context(old, new, raw_old, raw_new, fam, det.version, new_result.source_version, config_old,
                  dict(new_result.config), rename, ops, dev, compute_dtype, report.seed, new_result=new_result)
    build = Section("build", "Build")
    report.sections.append(build)
    t = time.perf_counter()
    state = {}
    for k, ref in raw_old.state_dict.items():
        x = ref.to_torch(copy=False)  # file-backed, copy-on-write: the weights are not read twice
        state[k] = x.to(compute_dtype) if x.is_floating_point() and x.dtype != compute_dtype else x
    cls_path = fam.legacy_classes[det.version]
    try:
        with skip_init():  # every value comes from OLD (strict load): random initial values would be waste
            old_model = adapter.build_old(ctx, state)
    except Exception as exc:
        raise CannotVerifyError(f"cannot rebuild the legacy model {cls_path} from OLD: {type(exc).__name__}: "
                                f"{exc}") from exc
    del state
    report.old_class = cls_path
    build.add(Check("legacy model", PASS, f"{cls_path} constructed from OLD's config, OLD's "
                    f"{len(raw_old.state_dict)} tensors loaded strictly", duration_s=time.perf_counter() - t))
    t = time.perf_counter()
    try:
        with skip_init():  # as for OLD: the strict load replaces every initial value
            new_model = build_v2_model(new_result)
    except Exception as exc:
        raise CannotVerifyError(f"cannot load the refactored model {fam.v2_class} from NEW: "
                                f"{type(exc).__name__}: {exc}") from exc
    if compute_dtype == torch.float64:
        new_model = new_model.double()
    report.new_class = fam.v2_class
    build.add(Check("refactored model", PASS, f"{fam.v2_class} loaded strictly from NEW's "
                    f"{len(raw_new.state_dict)} tensors", duration_s=time.perf_counter() - t))
    old_model.to(dev).eval()
    new_model.to(dev).eval()
    n_params = compute_parameters(new_model)  # an embedding table is a lookup: it does not make threads pay
    if threads is None and n_params < SMALL_MODEL:
        threads = 1
    if threads:
        torch.set_num_threads(int(threads))
    ctx.old_model, ctx.new_model = old_model, new_model
    if dev.type == "cuda":
        report.device_name = torch.cuda.get_device_name(dev)
        report.notes.append("CUDA: TF32 off (matmul and cuDNN), cuDNN deterministic, no autotuning, "
                            "float32 matmul precision 'highest', deterministic algorithms where they exist")
    build.add(_rename_check(map_result, new_model))

    weights = Section("weights", "Weights through the rename map")
    report.sections.append(weights)
    weights.add(_weights_check(ctx, atol, rtol, weights))

    # ---- inputs
    stored = None
    if inputs is not None:
        user, stored, report.inputs_source = load_inputs(inputs)
        batches = [_user_batch(adapter, ctx, b, i) for i, b in enumerate(user)]
    else:
        batches = adapter.make_batches(ctx)
        report.inputs_source = f"generated from the checkpoint (seed {report.seed}): " + \
            "; ".join(f"{b.name} [{b.description}]" for b in batches)
    outputs = Section("outputs", "Eval-mode outputs")
    report.sections.append(outputs)
    first_bad = _run_outputs(report, adapter, ctx, batches, outputs, atol, rtol)

    ref_batches: list[Batch] = []
    ref_outputs = stored
    if stored is not None:
        ref_batches = batches
    elif reference is not None:
        ref_user, ref_outputs, desc = load_inputs(reference)
        if ref_outputs is not None:
            ref_batches = [_user_batch(adapter, ctx, b, i) for i, b in enumerate(ref_user)]
            report.notes.append(f"stored legacy outputs checked: {desc}")
    if ref_batches and ref_outputs is not None:
        sec = Section("stored", "Stored legacy outputs")
        report.sections.append(sec)
        bad = _run_stored(adapter, ctx, ref_batches, ref_outputs, sec, atol, rtol)
        first_bad = first_bad or bad

    if first_bad is not None and localisation:
        report.localisation = _localise(adapter, ctx, first_bad, atol, rtol)
        loc = report.localisation
        if loc.get("module") is not None:
            outputs.notes.append(f"first divergent module: {loc['module']} ({loc.get('type')}; legacy "
                                 f"{loc.get('old_module')}): {loc.get('kind')}, max abs diff "
                                 f"{loc.get('max_abs'):.3e}")
    elif modules and batches:  # a passing run: how close every aligned module came to the tolerance
        outputs.summary["modules"] = _localise(adapter, ctx, _worst_row(adapter, batches[0], [0]), atol,
                                               rtol).get("modules", [])

    if "domain" in skip:
        _skipped(report, "domain", "Sequence-length domain of the text branch")
    elif adapter.has_text:
        sec = Section("domain", "Sequence-length domain of the text branch")
        report.sections.append(sec)
        t = time.perf_counter()
        run_domain(ctx, adapter, sec, atol, rtol)
        sec.duration_s = time.perf_counter() - t
    elif hasattr(adapter, "domain_checks"):  # a family's own input-domain traps (e.g. Names3Risk)
        sec = Section("domain", "Input domain (the family's traps)")
        report.sections.append(sec)
        t = time.perf_counter()
        adapter.domain_checks(ctx, sec, atol, rtol)
        sec.duration_s = time.perf_counter() - t
    elif getattr(adapter, "domain_note", None):
        report.notes.append(adapter.domain_note)  # say plainly why there is no domain section
    if "training" in skip:
        _skipped(report, "training", "Training equivalence")
    else:
        sec = Section("training", "Training equivalence")
        report.sections.append(sec)
        t = time.perf_counter()
        train_batch = next((b for b in batches if b.name == "random"), batches[0])
        run_training(ctx, adapter, train_batch, sec, atol, rtol, skip_optimizer="optimizer" in skip)
        sec.duration_s = time.perf_counter() - t


def _user_batch(adapter, ctx: Context, obj: Any, i: int) -> Batch:
    try:
        return adapter.from_user(ctx, obj, i)
    except (ValueError, KeyError, TypeError) as exc:
        raise CannotVerifyError(f"--inputs: {exc}") from exc


def _rename_check(map_result, new_model) -> Check:
    traces = map_result.traces
    renamed = [tr for tr in traces if tr.target]
    dropped = [tr for tr in traces if not tr.target]
    new_keys = set(new_model.state_dict())
    targets = {t for tr in renamed for t in tr.target.split(", ")}
    created = {tr.target for tr in map_result.created}
    uncovered = sorted(new_keys - targets - created)
    unknown = sorted(targets - new_keys)
    unreasoned = [tr.source for tr in dropped if not tr.reason]
    problems = []
    if uncovered:
        problems.append(f"refactored keys with no legacy source: {', '.join(uncovered[:6])}")
    if unknown:
        problems.append(f"rename targets the refactored model lacks: {', '.join(unknown[:6])}")
    if unreasoned:
        problems.append(f"dropped without a reason: {', '.join(unreasoned[:6])}")
    detail = (f"{len(renamed)} legacy keys paired with refactored keys, {len(dropped)} dropped with a reason"
              + (f", {len(created)} created" if created else ""))
    return Check("rename map", FAIL if problems else PASS, "; ".join(problems) if problems else detail,
                 data={"dropped": {tr.source: tr.reason for tr in dropped}})


def _weights_check(ctx: Context, atol: float, rtol: float, section: Section) -> Check:
    t = time.perf_counter()
    so, sn = ctx.old_model.state_dict(), ctx.new_model.state_dict()
    rows, transformed, bad = {}, [], []
    worst_abs = worst_rel = 0.0
    for k, target in ctx.rename.items():
        if any(op != "rename" for op in ctx.ops.get(k, [])):
            transformed.append(f"{k} ({'/'.join(o for o in ctx.ops[k] if o != 'rename')})")
            continue
        a, b = sn.get(target), so.get(k)
        if a is None or b is None:
            continue
        if a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b):
            rows[k] = {"target": target, "max_abs": 0.0, "equal": True}
            continue
        d = compare(a, b, atol, rtol)
        rows[k] = {"target": target, "max_abs": d.max_abs, "max_rel": d.max_rel, "equal": False, "ok": d.ok}
        worst_abs, worst_rel = max(worst_abs, d.max_abs), max(worst_rel, d.max_rel)
        if not d.ok:
            bad.append(f"{target} (legacy {k}): max abs diff {d.max_abs:.3e}")
    if transformed:
        section.notes.append("changed by a tensor operation of the rules, compared through the outputs only: "
                             + ", ".join(transformed))
    equal = sum(1 for r in rows.values() if r["equal"])
    if bad:
        detail = f"{len(bad)} of {len(rows)} tensors differ: " + "; ".join(bad[:6])
    else:
        detail = f"{len(rows)} tensors agree ({equal} bitwise equal)"
    return Check("tensors", FAIL if bad else PASS, detail, worst_abs, worst_rel, atol, rtol,
                 time.perf_counter() - t, data={"tensors": rows})


def _forward(adapter, side: str, model, batch: Batch, ctx: Context):
    with torch.no_grad():
        return adapter.forward(side, model, batch, ctx)


def _output_pairs(adapter, ctx: Context, out_new: torch.Tensor, out_old: torch.Tensor):
    if adapter.classifier(ctx):
        return [("logits", out_new, out_old),
                ("probabilities", torch.softmax(out_new, dim=1), torch.softmax(out_old, dim=1))]
    return [("output", out_new, out_old)]


def _run_outputs(report: VerifyReport, adapter, ctx: Context, batches: list[Batch], section: Section,
                 atol: float, rtol: float) -> Batch | None:
    first_bad = None
    t0 = time.perf_counter()
    max_len = adapter.max_len(ctx) if adapter.has_text else None
    for batch in batches:
        b = adapter.to_device(batch, ctx.device)
        # a real batch of another length than max_sen_len: the legacy model may be undefined there or
        # ignore the tail (see the domain section); such differences are expected, not failures
        expect = adapter.length_expectation(ctx, batch.length) if max_len and batch.length and \
            batch.length != max_len else "exact"
        t = time.perf_counter()
        try:
            out_old = _forward(adapter, "old", ctx.old_model, b, ctx)
        except Exception as exc:
            if expect == "undefined":
                section.add(Check(f"[{batch.name}]", EXPECTED, f"the legacy model is not defined for length "
                                  f"{batch.length} (max_sen_len={max_len}): {type(exc).__name__}"))
            else:
                section.add(Check(f"[{batch.name}]", ERROR, f"the legacy model raised on this batch "
                                  f"({batch.description}): {type(exc).__name__}: {exc}"))
            continue
        try:
            out_new = _forward(adapter, "new", ctx.new_model, b, ctx)
        except Exception as exc:
            section.add(Check(f"[{batch.name}]", FAIL, f"the refactored model raised where the legacy model did "
                              f"not ({batch.description}): {type(exc).__name__}: {exc}"))
            first_bad = first_bad or batch
            continue
        dt = time.perf_counter() - t
        for name, a, o in _output_pairs(adapter, ctx, out_new, out_old):
            d = compare(a, o, atol, rtol)
            status, detail = (PASS if d.ok else FAIL), (d.detail or batch.description)
            if not d.ok and expect == "prefix":
                status = EXPECTED
                detail = (f"expected difference: at length {batch.length} the legacy model pools only the first "
                          f"tokens (sized for max_sen_len={max_len}), v2 the whole sequence; {d.detail}")
            c = section.add(Check(f"{name} [{batch.name}]", status, detail, d.max_abs, d.max_rel, atol, rtol, dt,
                                  data={"batch": batch.name, "batch_size": batch.size, "length": batch.length,
                                        "legacy_pooling": expect, "worst_index": d.worst}))
            if status != EXPECTED:
                report.outputs.setdefault(name, OutputDiff(name)).update(c)
            if status == FAIL and first_bad is None:
                first_bad = _worst_row(adapter, batch, d.worst)
    if not any(c.status in (PASS, FAIL) for c in section.checks):
        section.add(Check("compared", ERROR, "no batch could be compared (every batch raised or has a length "
                          "the legacy model does not handle as v2 does)"))
    section.duration_s = time.perf_counter() - t0
    return first_bad


def _run_stored(adapter, ctx: Context, batches: list[Batch], stored: list[torch.Tensor], section: Section,
                atol: float, rtol: float) -> Batch | None:
    first_bad = None
    for batch, ref in zip(batches, stored):
        b = adapter.to_device(batch, ctx.device)
        for side, model, who in (("old", ctx.old_model, "legacy model reproduces"),
                                 ("new", ctx.new_model, "refactored model matches")):
            t = time.perf_counter()
            try:
                out = _forward(adapter, side, model, b, ctx)
            except Exception as exc:
                section.add(Check(f"{side} [{batch.name}]", ERROR, f"{type(exc).__name__}: {exc}"))
                continue
            d = compare(out, ref.to(out.dtype), atol, rtol)
            section.add(Check(f"{side} [{batch.name}]", PASS if d.ok else FAIL,
                              f"{who} the stored legacy outputs" + (f": {d.detail}" if d.detail else ""),
                              d.max_abs, d.max_rel, atol, rtol, time.perf_counter() - t))
            if not d.ok and side == "new" and first_bad is None:
                first_bad = _worst_row(adapter, batch, d.worst)
    return first_bad


def _worst_row(adapter, batch: Batch, worst: list[int] | None) -> Batch:
    """Localisation records every module's activations: one row (the worst one) keeps that small."""
    if batch.size <= 1 or not worst:
        return batch
    try:
        return adapter.select_rows(batch, [int(worst[0])])
    except Exception:  # a batch the adapter cannot slice: localise on the whole batch
        return batch


def _localise(adapter, ctx: Context, batch: Batch, atol: float, rtol: float) -> dict[str, Any]:
    b = adapter.to_device(batch, ctx.device)
    try:
        old_cap, _ = capture(ctx.old_model, lambda: adapter.forward("old", ctx.old_model, b, ctx))
        new_cap, _ = capture(ctx.new_model, lambda: adapter.forward("new", ctx.new_model, b, ctx))
    except Exception as exc:
        return {"module": None, "kind": "error", "detail": f"{type(exc).__name__}: {exc}", "batch": batch.name}
    pairs = pair_modules(ctx.old_model, ctx.new_model, ctx.rename)
    result = localise(old_cap, new_cap, pairs, atol, rtol)
    result["modules"] = module_diffs(old_cap, new_cap, pairs, atol, rtol)
    result["batch"] = batch.name
    return result
