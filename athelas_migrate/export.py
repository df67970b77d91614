"""ONNX export of the refactored models, with a parity check against PyTorch.

:func:`export_onnx` (``athelas-migrate export CKPT OUT.onnx``):

1. loads the checkpoint as a v2 model in eval mode (legacy checkpoints are
   migrated in memory on the way, see :func:`athelas_migrate.predict.load_any_model`);
2. asks the model's *input spec* (see below) for the ONNX input names, dynamic
   axes, a positional wrapper module and an input generator;
3. exports with the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``)
   to a temporary file in the destination directory, dynamic batch axis (and
   dynamic sequence axis for token ids);
4. runs ``onnx.checker.check_model``;
5. runs ONNX Runtime (CPU) and the PyTorch model on generated inputs, several
   batch sizes (1 included) times two sequence lengths, and compares the outputs
   at ``atol`` (default ``1e-5``);
6. renames the temporary file to ``OUT`` only when every comparison passed.
   Any failure removes the temporary file and raises (a parity mismatch is a
   :class:`~athelas_migrate.errors.ValidationError`, exit code 1).

Input specs
-----------
An input spec (``model -> InputSpec``) says how to feed one model class. A family names its spec in
``Family.onnx_spec`` (by convention in its folder's ``onnx.py``, e.g. ``athelas_migrate/families/cnn/onnx.py``
for TextCNN, TabAE and BimodalCNN); ``register_input_spec("ClassName")`` overrides it for a class at run time.
Lookup follows the model's MRO, so a subclass inherits its parent's spec. Example::

    # athelas_migrate/families/myfamily/onnx.py
    from athelas_migrate.export import InputSpec, BatchDictForward

    def spec(model):
        names = ["text_input_ids", "text_attention_mask", *model.tab_field_list]
        return InputSpec(
            names=names, output_names=["logits"],
            dynamic_axes={"text_input_ids": {0: "batch", 1: "sequence"},
                          "text_attention_mask": {0: "batch", 1: "sequence"},
                          **{f: {0: "batch"} for f in model.tab_field_list}},
            wrapper=BatchDictForward(model, names),
            make_inputs=lambda batch, seq, gen: [...],  # one tensor per name
            seq_lengths=[32, 48])
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import OutputExistsError, UsageError, ValidationError

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_BATCH_SIZES",
    "DEFAULT_OPSET",
    "BatchDictForward",
    "ExportResult",
    "INPUT_SPECS",
    "InputSpec",
    "PositionalForward",
    "export_onnx",
    "input_spec_for",
    "register_input_spec",
]

DEFAULT_ATOL = 1e-5
DEFAULT_OPSET = 17
DEFAULT_BATCH_SIZES = (1, 4, 16)


@dataclass
class InputSpec:
    """How to export and exercise one model.

    ``names``: ONNX input names, in the order ``wrapper.forward`` takes them.
    ``make_inputs(batch_size, seq_len, generator)``: one tensor per name
    (``seq_len`` is ``None`` when ``seq_lengths`` is ``None``).
    ``seq_lengths``: the sequence lengths the parity check uses (the first one
    also serves as the export example), or ``None`` for inputs without one.
    """

    names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    wrapper: Any
    make_inputs: Callable[[int, int | None, Any], list[Any]]
    seq_lengths: list[int] | None = None
    notes: list[str] = field(default_factory=list)
    #: the module whose eager output is the parity reference (default: ``wrapper``); set it when
    #: ``wrapper`` re-expresses the model's forward in a trace-friendly way.
    reference: Any = None
    #: the lowest ONNX opset the model exports with (None: any); a lower ``opset`` is a usage error
    min_opset: int | None = None


INPUT_SPECS: dict[str, Callable[[Any], InputSpec]] = {}


def register_input_spec(*class_names: str) -> Callable[[Callable[[Any], InputSpec]], Callable[[Any], InputSpec]]:
    """Decorator: use ``fn(model) -> InputSpec`` for models whose class is named one of ``class_names``.

    Args:
        class_names: model class names (matched along the model's MRO); they take precedence over the spec the
            model's family names.

    Returns:
        The decorator, which returns ``fn`` unchanged.
    """

    def deco(fn: Callable[[Any], InputSpec]) -> Callable[[Any], InputSpec]:
        for name in class_names:
            INPUT_SPECS[name] = fn
        return fn

    return deco


def input_spec_for(model: Any) -> InputSpec:
    """The input spec of `model`.

    Args:
        model: a refactored model.

    Returns:
        The spec registered for its class name (along its MRO) with `register_input_spec`, else the one its
        family names in `onnx_spec` (the family whose `v2_class` is the model's class).

    Raises:
        UsageError: no spec is known for the model's class.
    """
    from .families import FAMILIES
    from .families.base import load_class

    by_class = {fam.v2_class.rpartition(":")[2]: fam.onnx_spec for fam in FAMILIES.values() if fam.onnx_spec}
    for klass in type(model).__mro__:
        fn = INPUT_SPECS.get(klass.__name__)
        if fn is None and klass.__name__ in by_class:
            fn = load_class(by_class[klass.__name__])
        if fn is not None:
            return fn(model)
    known = sorted(set(INPUT_SPECS) | set(by_class))
    raise UsageError(f"no ONNX input spec for {type(model).__name__} (known: {', '.join(known)}); "
                     "a family names its spec in `onnx_spec` (see athelas_migrate.export)")


class PositionalForward(nn.Module):
    """``forward(*tensors)`` calls ``model(*tensors)`` (models that take tensors, e.g. scaffolded families)."""

    def __init__(self, model: nn.Module) -> None:
        """Wrap ``model``.

        Args:
            model: the model to call with the ONNX inputs as positional arguments.
        """
        super().__init__()
        self.inner = model

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.inner(*tensors)


class BatchDictForward(nn.Module):
    """``forward(*tensors)`` calls ``model({names[i]: tensors[i]})`` (models that take a batch dict)."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.inner = model
        self.keys = list(names)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.inner(dict(zip(self.keys, tensors)))


# ------------------------------------------------------------------ export
@dataclass
class ParityRow:
    batch_size: int
    seq_len: int | None
    max_abs_diff: float
    ok: bool


@dataclass
class ExportResult:
    out_path: str
    model_class: str
    input_names: list[str]
    output_names: list[str]
    opset: int
    atol: float
    rows: list[ParityRow]
    file_size: int
    notes: list[str] = field(default_factory=list)

    @property
    def max_abs_diff(self) -> float:
        """The largest difference over every parity run (0.0 when there were none)."""
        return max((r.max_abs_diff for r in self.rows), default=0.0)

    @property
    def ok(self) -> bool:
        """Whether there was at least one parity run and every one was within `atol`."""
        return bool(self.rows) and all(r.ok for r in self.rows)


def torch_reference(wrapper: Any, inputs: Sequence[Any]) -> Any:
    """The PyTorch eager output the ONNX model is compared with.

    Args:
        wrapper: the module to run (in eval mode), with the same inputs as the ONNX graph.
        inputs: the input tensors, in the graph's input order.

    Returns:
        The first output, as a float64 numpy array (no grad).
    """
    with torch.no_grad():
        out = wrapper(*inputs)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out.detach().double().cpu().numpy()


def _check_args(out: str, atol: float, batch_sizes: Sequence[int], force: bool) -> str:
    if not (atol >= 0):  # also refuses NaN
        raise UsageError(f"--atol must be >= 0, got {atol}")
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise UsageError(f"batch sizes must be >= 1, got {list(batch_sizes)}")
    out_abs = os.path.abspath(out)
    if os.path.isdir(out_abs):
        raise UsageError(f"{out}: is a directory; give a file name such as model.onnx")
    parent = os.path.dirname(out_abs)
    if not os.path.isdir(parent):
        raise UsageError(f"output directory {parent} does not exist")
    if os.path.exists(out_abs) and not force:
        raise OutputExistsError(f"{out} exists; pass --force to replace it")
    return out_abs


def export_onnx(ckpt: str | None, out: str, *, overrides: Mapping[str, Any] | None = None,
                atol: float = DEFAULT_ATOL, opset: int = DEFAULT_OPSET,
                batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, seed: int = 0, force: bool = False,
                model: Any = None) -> ExportResult:
    """Export ``ckpt`` (or an already built ``model``) to ``out`` after a passing parity check.

    The file is written to a temporary beside ``out`` and renamed only when ONNX Runtime agrees with PyTorch
    on every batch size (and sequence length), so a failed export leaves nothing behind.

    Args:
        ckpt: the checkpoint to load (ignored when ``model`` is given).
        out: the .onnx file to write.
        overrides: hyper-parameters for loading ``ckpt`` (as `--set`).
        atol: the largest absolute difference accepted.
        opset: the ONNX opset to export with.
        batch_sizes: the batch sizes the parity check runs.
        seed: seeds the random inputs of the parity check.
        force: replace an existing ``out``.
        model: an already built model to export instead of loading ``ckpt``.

    Returns:
        The parity table and what was written.

    Raises:
        UsageError: bad arguments, no checkpoint nor model, or an opset the model cannot export with.
        OutputExistsError: ``out`` exists and ``force`` is off.
        ValidationError: the export failed, or ONNX Runtime and PyTorch disagree beyond ``atol``.
    """
    out_abs = _check_args(out, atol, batch_sizes, force)
    if model is None:
        if ckpt is None:
            raise UsageError("give a checkpoint or a model")
        from .predict import load_any_model

        model = load_any_model(ckpt, overrides)
    notes: list[str] = []
    first = next(iter(model.parameters()), None)
    if first is not None and first.dtype != torch.float32:
        notes.append(f"parameters were {first.dtype}; exported in float32")
    model = model.float().eval()
    spec = input_spec_for(model)
    if spec.min_opset is not None and opset < spec.min_opset:
        raise UsageError(f"{type(model).__name__} needs ONNX opset >= {spec.min_opset} (got --opset {opset}): "
                         "BERT attention exports as scaled_dot_product_attention, which opset 14 introduced")
    notes += spec.notes
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(out_abs)}.", suffix=".tmp",
                               dir=os.path.dirname(out_abs))
    os.close(fd)
    try:
        rows = _export_and_check(spec, tmp, opset=opset, atol=atol, batch_sizes=batch_sizes, seed=seed)
        result = ExportResult(out_abs, type(model).__name__, list(spec.names), list(spec.output_names),
                              opset, atol, rows, os.path.getsize(tmp), notes)
        if not result.ok:
            worst = max(rows, key=lambda r: r.max_abs_diff)
            raise ValidationError(
                f"ONNX Runtime and PyTorch disagree: max abs diff {result.max_abs_diff:.3g} > atol {atol:g} "
                f"(batch {worst.batch_size}, sequence length {worst.seq_len}); nothing was written to {out}")
        os.replace(tmp, out_abs)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return result


def _export_and_check(spec: InputSpec, path: str, *, opset: int, atol: float, batch_sizes: Sequence[int],
                      seed: int) -> list[ParityRow]:
    import numpy as np
    import onnx
    import onnxruntime as ort

    spec.wrapper.eval()
    if spec.reference is not None:
        spec.reference.eval()
    gen = torch.Generator().manual_seed(seed)
    seqs: list[int | None] = list(spec.seq_lengths) if spec.seq_lengths else [None]
    example = spec.make_inputs(2, seqs[0], gen)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about shape checks in forward
            torch.onnx.export(spec.wrapper, tuple(example), path, dynamo=False, input_names=spec.names,
                              output_names=spec.output_names, dynamic_axes=spec.dynamic_axes,
                              opset_version=opset, do_constant_folding=True)
    except Exception as exc:
        raise ValidationError(f"torch.onnx.export failed: {type(exc).__name__}: {exc}") from None
    finally:
        spec.wrapper.eval()  # the exporter restores the wrapper's own (training) mode afterwards
    try:
        onnx.checker.check_model(path, full_check=True)
    except Exception as exc:
        raise ValidationError(f"onnx.checker rejected the exported model: {exc}") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    got_names = [i.name for i in session.get_inputs()]
    if got_names != list(spec.names):
        raise ValidationError(f"the ONNX model's inputs are {got_names}, expected {list(spec.names)}")
    rows = []
    for seq in seqs:
        for b in batch_sizes:
            inputs = spec.make_inputs(int(b), seq, gen)
            expected = torch_reference(spec.reference or spec.wrapper, inputs)
            feeds = {n: t.detach().cpu().numpy() for n, t in zip(spec.names, inputs)}
            got = np.asarray(session.run([spec.output_names[0]], feeds)[0], dtype=np.float64)
            if got.shape != expected.shape:
                raise ValidationError(f"ONNX output shape {got.shape} != PyTorch {expected.shape} "
                                      f"(batch {b}, sequence length {seq})")
            diff = float(np.max(np.abs(got - expected))) if got.size else 0.0
            if np.isnan(diff):
                diff = float("inf")
            rows.append(ParityRow(int(b), seq, diff, diff <= atol))
    return rows


def render_result(result: ExportResult, console: Any) -> None:
    """Print the parity table, the notes and what was written.

    Args:
        result: the result of `export_onnx`.
        console: the rich console to print on.
    """
    from rich.table import Table

    table = Table(title=f"ONNX Runtime vs PyTorch: {result.model_class}, atol {result.atol:g}")
    table.add_column("batch", justify="right")
    table.add_column("seq len", justify="right")
    table.add_column("max abs diff", justify="right")
    table.add_column("ok")
    for r in result.rows:
        table.add_row(str(r.batch_size), "-" if r.seq_len is None else str(r.seq_len),
                      f"{r.max_abs_diff:.3g}", "yes" if r.ok else "NO")
    console.print(table)
    for note in result.notes:
        console.print(f"note: {note}")
    console.print(f"inputs: {', '.join(result.input_names)}; outputs: {', '.join(result.output_names)}; "
                  f"opset {result.opset}")
    console.print(f"parity OK: max abs diff {result.max_abs_diff:.3g} <= {result.atol:g} over "
                  f"{len(result.rows)} runs; wrote {result.out_path} ({result.file_size} bytes)")
