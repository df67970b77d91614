"""ONNX input specs of the BERT fusion families (named by each family's `onnx_spec`; see athelas_migrate.export).

Inputs are named as the batch keys: per text `{text_name}_input_ids` and `{text_name}_attention_mask`,
`[B, chunks, T]` int64 with batch, chunks and T dynamic (per text), then each tabular field as `[B]` float32;
output `logits`; opset >= 14 (see docs/fusion.md).
"""

from __future__ import annotations

from typing import Any

import torch

from ...errors import UsageError
from ...export import BatchDictForward, InputSpec

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


def bimodal_bert_spec(model: Any) -> InputSpec:
    """BimodalBert: one text's ids and attention mask, then the tabular fields; ``logits`` out.

    Args:
        model: the built v2 model (eval mode).

    Returns:
        The ONNX input spec.
    """
    return _bert_fusion_spec(model, [(model.text_name, model.text_encoder)])


def trimodal_bert_spec(model: Any) -> InputSpec:
    """TrimodalBert: the primary then the secondary text's inputs, then the tabular fields; ``logits`` out.

    Args:
        model: the built v2 model (eval mode).

    Returns:
        The ONNX input spec.
    """
    return _bert_fusion_spec(model, [(model.primary_text_name, model.primary_text_encoder),
                                     (model.secondary_text_name, model.secondary_text_encoder)])
