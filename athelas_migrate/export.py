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
``INPUT_SPECS`` maps a model class name to a function ``model -> InputSpec``.
A new family plugs in with::

    from athelas_migrate.export import InputSpec, BatchDictForward, register_input_spec

    @register_input_spec("MyFusionModel")
    def _my_spec(model):
        names = ["text_input_ids", "text_attention_mask", *model.tab_field_list]
        return InputSpec(
            names=names, output_names=["logits"],
            dynamic_axes={"text_input_ids": {0: "batch", 1: "sequence"},
                          "text_attention_mask": {0: "batch", 1: "sequence"},
                          **{f: {0: "batch"} for f in model.tab_field_list}},
            wrapper=BatchDictForward(model, names),
            make_inputs=lambda batch, seq, gen: [...],  # one tensor per name
            seq_lengths=[32, 48])

Built in: ``TextCNN`` (input: its text batch key ``[B, L]`` int64, output ``logits``),
``TabAE`` (inputs: one ``[B]`` float32 per tabular field, output ``embedding``),
``BimodalCNN`` (inputs named exactly as the batch keys: the text batch key
``[B, L]`` int64, then each field of ``tab_field_list`` as a ``[B]`` float32
tensor; output ``logits``), and the BERT fusion families ``BimodalBertCrossAttn``,
``BimodalBertGateFusion``, ``BimodalBertMoE``, ``TrimodalCrossAttentionBert``
(inputs named as the batch keys: per text ``{text_name}_input_ids`` and
``{text_name}_attention_mask``, ``[B, chunks, T]`` int64 with batch, chunks and T
dynamic (chunks and T per text), then each tabular field as ``[B]`` float32;
output ``logits``; opset >= 14, see docs/fusion.md).
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


def register_input_spec(*class_names: str):
    """Decorator: register ``fn(model) -> InputSpec`` for models whose class is named ``class_names``."""

    def deco(fn: Callable[[Any], InputSpec]) -> Callable[[Any], InputSpec]:
        for name in class_names:
            INPUT_SPECS[name] = fn
        return fn

    return deco


def input_spec_for(model: Any) -> InputSpec:
    """The input spec of ``model`` (looked up by class name along its MRO)."""
    for klass in type(model).__mro__:
        fn = INPUT_SPECS.get(klass.__name__)
        if fn is not None:
            return fn(model)
    raise UsageError(f"no ONNX input spec registered for {type(model).__name__} "
                     f"(known: {', '.join(sorted(INPUT_SPECS))}); see athelas_migrate.export.register_input_spec")


class PositionalForward(nn.Module):
    """``forward(*tensors)`` calls ``model(*tensors)`` (models that take tensors)."""

    def __init__(self, model: nn.Module) -> None:
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


# ----------------------------------------------------------- built-in specs
def _text_lengths(encoder: Any, config: Mapping[str, Any]) -> list[int]:
    """Two valid sequence lengths: ``max_sen_len`` and a shorter (or else longer) one."""
    minimum = int(getattr(encoder, "min_seq_len", 1))
    main = max(int(config.get("max_sen_len") or minimum), minimum)
    other = max(minimum, main // 2 + 1)
    if other == main:
        other = main + 16
    return [main, other]


def _token_ids(batch: int, seq: int, vocab_size: int, gen: Any) -> Any:
    ids = torch.randint(2, max(3, vocab_size), (batch, seq), generator=gen, dtype=torch.long)
    if seq > 4:  # a padded tail on some rows, as real batches have
        lengths = torch.randint(seq // 2, seq + 1, (batch,), generator=gen)
        mask = torch.arange(seq).unsqueeze(0) >= lengths.unsqueeze(1)
        ids = ids.masked_fill(mask, 0)
    return ids.clamp_max(vocab_size - 1)


@register_input_spec("TextCNN")
def _text_cnn_spec(model: Any) -> InputSpec:
    vocab_size = int(model.text_encoder.embeddings.num_embeddings)

    def make(batch: int, seq: int | None, gen: Any) -> list[Any]:
        return [_token_ids(batch, int(seq), vocab_size, gen)]

    key = model.text_batch_key  # the batch key, so a batch dict feeds the ONNX session as it is
    return InputSpec(
        names=[key],
        output_names=["logits"],
        dynamic_axes={key: {0: "batch", 1: "sequence"}, "logits": {0: "batch"}},
        wrapper=BatchDictForward(model, [key]),
        make_inputs=make,
        seq_lengths=_text_lengths(model.text_encoder, model.config),
    )


@register_input_spec("TabAE")
def _tab_ae_spec(model: Any) -> InputSpec:
    fields = list(model.tab_field_list)  # one input per field: the model's batch keys

    def make(batch: int, seq: int | None, gen: Any) -> list[Any]:
        return [torch.randn(batch, generator=gen) * 3.0 for _ in fields]

    axes: dict[str, dict[int, str]] = {f: {0: "batch"} for f in fields}
    axes["embedding"] = {0: "batch"}
    return InputSpec(
        names=fields,
        output_names=["embedding"],
        dynamic_axes=axes,
        wrapper=BatchDictForward(model, fields),
        make_inputs=make,
        seq_lengths=None,
    )


@register_input_spec("BimodalCNN")
def _bimodal_cnn_spec(model: Any) -> InputSpec:
    text_key = model.text_batch_key
    fields = list(model.tab_field_list or [])
    if text_key in fields:
        raise UsageError(f"tabular field {text_key!r} has the name of the text batch key")
    names = [text_key, *fields]
    vocab_size = int(model.text_encoder.embeddings.num_embeddings)

    def make(batch: int, seq: int | None, gen: Any) -> list[Any]:
        tensors = [_token_ids(batch, int(seq), vocab_size, gen)]
        tensors += [torch.randn(batch, generator=gen) * 3.0 for _ in fields]
        return tensors

    axes: dict[str, dict[int, str]] = {text_key: {0: "batch", 1: "sequence"}}
    axes.update({f: {0: "batch"} for f in fields})
    axes["logits"] = {0: "batch"}
    return InputSpec(
        names=names,
        output_names=["logits"],
        dynamic_axes=axes,
        wrapper=BatchDictForward(model, names),
        make_inputs=make,
        seq_lengths=_text_lengths(model.text_encoder, model.config),
    )


# -------------------------------------------------------- Names3Risk specs
@register_input_spec("LSTM2Risk", "Transformer2Risk")
def _names3risk_spec(model: Any) -> InputSpec:
    """The deployed format: ids ``[B, T]`` int64 (pad id 1; no lengths: the notebook sent none),
    Transformer also the mask ``[B, T]`` bool (True = token), then one ``[B]`` float32 per field."""
    fields = list(model.tab_field_list)
    transformer = hasattr(model, "mask_key")
    names = [model.ids_key, *([model.mask_key] if transformer else []), *fields]
    vocab_size = int(model.text_encoder.token_embedding.num_embeddings)
    max_len = int(model.config["max_sen_len"]) if transformer else None

    def make(batch: int, seq: int | None, gen: Any) -> list[Any]:
        seq = int(seq)
        ids = torch.randint(2, max(3, vocab_size), (batch, seq), generator=gen)
        valid = torch.randint(max(1, seq // 2), seq + 1, (batch,), generator=gen)
        valid[0] = seq
        keep = torch.arange(seq)[None, :] < valid[:, None]
        tensors = [ids.masked_fill(~keep, 1)] + ([keep] if transformer else [])
        return tensors + [torch.randn(batch, generator=gen) * 3.0 for _ in fields]

    axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "sequence"} for n in names[: 2 if transformer else 1]}
    axes.update({f: {0: "batch"} for f in fields})
    axes["logits"] = {0: "batch"}
    lengths = [max_len, max(1, max_len // 2)] if max_len else [16, 9]
    return InputSpec(names=names, output_names=["logits"], dynamic_axes=axes, wrapper=BatchDictForward(model, names),
                     make_inputs=make, seq_lengths=lengths)


# ------------------------------------------------------- BERT fusion specs
#: the lowest opset the BERT fusion models export with (transformers' BERT attention is
#: ``scaled_dot_product_attention``, which the TorchScript exporter supports from opset 14)
BERT_MIN_OPSET = 14
CHUNK_CYCLE = (2, 1, 3)  # chunks per text in successive generated batches (the export example has 2)


def _bert_text(batch: int, chunks: int, seq: int, vocab_size: int, gen: Any) -> tuple[Any, Any]:
    """``[B, chunks, T]`` ids and mask: partially padded chunks, one fully padded chunk when chunks > 1,
    ids over the whole vocabulary (0 and the last id among the real tokens), padding id 0."""
    ids = torch.randint(0, vocab_size, (batch, chunks, seq), generator=gen, dtype=torch.long)
    valid = torch.randint(1, seq + 1, (batch, chunks), generator=gen)
    valid[:, 0] = torch.maximum(valid[:, 0], torch.full_like(valid[:, 0], min(2, seq)))
    mask = (torch.arange(seq).view(1, 1, seq) < valid.unsqueeze(-1)).long()
    if chunks > 1:
        mask[0, -1] = 0  # a fully padded chunk (the mean over chunks includes it)
    ids = ids.masked_fill(mask == 0, 0)
    ids[0, 0, 0] = vocab_size - 1
    if seq > 1:
        ids[-1, 0, 1] = 0
    return ids, mask


def _bert_fusion_spec(model: Any, texts: list[tuple[str, Any]]) -> InputSpec:
    """Inputs named as the batch keys: per text ``{name}_{ids key}`` and ``{name}_{mask key}``
    (``[B, chunks, T]`` int64; batch, chunks and T dynamic, per text), then each tabular field
    (``[B]`` float32). Output ``logits``."""
    ids_suffix, mask_suffix = model.text_input_ids_key, model.text_attention_mask_key
    fields = list(model.tab_field_list or [])
    names: list[str] = []
    axes: dict[str, dict[int, str]] = {}
    for text_name, _ in texts:
        for key in (f"{text_name}_{ids_suffix}", f"{text_name}_{mask_suffix}"):
            names.append(key)
            axes[key] = {0: "batch", 1: f"{text_name}_chunks", 2: f"{text_name}_sequence"}
    clash = sorted(set(names) & set(fields))
    if clash:
        raise UsageError(f"tabular field(s) {', '.join(clash)} have the name of a text batch key")
    names += fields
    axes.update({f: {0: "batch"} for f in fields})
    axes["logits"] = {0: "batch"}
    limits = [(int(enc.bert.config.vocab_size), int(enc.bert.config.max_position_embeddings)) for _, enc in texts]
    max_seq = min(m for _, m in limits)
    seqs = sorted({min(16, max_seq), min(7, max_seq)}, reverse=True)
    calls = [0]

    def make(batch: int, seq: int | None, gen: Any) -> list[Any]:
        chunks = CHUNK_CYCLE[calls[0] % len(CHUNK_CYCLE)]
        calls[0] += 1
        tensors: list[Any] = []
        for i, (vocab, max_pos) in enumerate(limits):
            # the texts differ in shape: the second has one chunk more (cycled) and 3 tokens fewer
            c = chunks if i == 0 else CHUNK_CYCLE[calls[0] % len(CHUNK_CYCLE)]
            t = int(seq) if i == 0 else max(1, min(max_pos, int(seq) - 3))
            tensors += list(_bert_text(batch, c, t, vocab, gen))
        tensors += [torch.randn(batch, generator=gen) * 3.0 for _ in fields]
        return tensors

    return InputSpec(
        names=names,
        output_names=["logits"],
        dynamic_axes=axes,
        wrapper=BatchDictForward(model, names),
        make_inputs=make,
        seq_lengths=seqs,
        notes=["the graph has no 'All input chunks in batch are empty!' check (the PyTorch model raises there; "
               "the graph returns the mean over the fully padded chunks)"],
        min_opset=BERT_MIN_OPSET,
    )


@register_input_spec("BimodalBertCrossAttn", "BimodalBertGateFusion", "BimodalBertMoE")
def _bimodal_bert_spec(model: Any) -> InputSpec:
    return _bert_fusion_spec(model, [(model.text_name, model.text_encoder)])


@register_input_spec("TrimodalCrossAttentionBert")
def _trimodal_bert_spec(model: Any) -> InputSpec:
    return _bert_fusion_spec(model, [(model.primary_text_name, model.primary_text_encoder),
                                     (model.secondary_text_name, model.secondary_text_encoder)])


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
        return max((r.max_abs_diff for r in self.rows), default=0.0)

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r.ok for r in self.rows)


def torch_reference(wrapper: Any, inputs: Sequence[Any]) -> Any:
    """PyTorch eager output of ``wrapper`` (eval, no grad) as a float64 numpy array."""
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
    """Export ``ckpt`` (or an already built ``model``) to ``out`` after a passing parity check."""
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
