"""ONNX input specs of the CNN families (named by each family's `onnx_spec`; see athelas_migrate.export).

TextCNN: its text batch key `[B, L]` int64, output `logits`. TabAE: one `[B]` float32 per tabular field, output
`embedding`. BimodalCNN: the text batch key `[B, L]` int64, then each field of `tab_field_list` as `[B]` float32,
output `logits`. Input names are the batch keys, so a batch dict feeds the ONNX session as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ...errors import UsageError
from ...export import BatchDictForward, InputSpec


def text_lengths(encoder: Any, config: Mapping[str, Any]) -> list[int]:
    """The sequence lengths the parity check runs: ``max_sen_len`` and a shorter (or else longer) one.

    Args:
        encoder: the text encoder (its ``min_seq_len``, set by its kernels and layers, bounds them below).
        config: the model's config.

    Returns:
        Two valid lengths.
    """
    minimum = int(getattr(encoder, "min_seq_len", 1))
    main = max(int(config.get("max_sen_len") or minimum), minimum)
    other = max(minimum, main // 2 + 1)
    if other == main:
        other = main + 16
    return [main, other]


def token_ids(batch: int, seq: int, vocab_size: int, gen: Any) -> Any:
    """Random token ids with a padded (id 0) tail on some rows, as real batches have.

    Args:
        batch: rows.
        seq: the sequence length.
        vocab_size: ids stay below it.
        gen: the torch generator the parity check seeds.

    Returns:
        An int64 tensor ``[batch, seq]``.
    """
    ids = torch.randint(2, max(3, vocab_size), (batch, seq), generator=gen, dtype=torch.long)
    if seq > 4:  # a padded tail on some rows, as real batches have
        lengths = torch.randint(seq // 2, seq + 1, (batch,), generator=gen)
        mask = torch.arange(seq).unsqueeze(0) >= lengths.unsqueeze(1)
        ids = ids.masked_fill(mask, 0)
    return ids.clamp_max(vocab_size - 1)


def text_cnn_spec(model: Any) -> InputSpec:
    """TextCNN: the text batch key ``[B, L]`` int64 in, ``logits`` out.

    Args:
        model: the built v2 model (eval mode).

    Returns:
        The ONNX input spec.
    """
    vocab_size = int(model.text_encoder.embeddings.num_embeddings)

    def make(batch: int, seq: int | None, gen: Any) -> list[Any]:
        return [token_ids(batch, int(seq), vocab_size, gen)]

    key = model.text_batch_key  # the batch key, so a batch dict feeds the ONNX session as it is
    return InputSpec(
        names=[key],
        output_names=["logits"],
        dynamic_axes={key: {0: "batch", 1: "sequence"}, "logits": {0: "batch"}},
        wrapper=BatchDictForward(model, [key]),
        make_inputs=make,
        seq_lengths=text_lengths(model.text_encoder, model.config),
    )


def tab_ae_spec(model: Any) -> InputSpec:
    """TabAE: one ``[B]`` float32 per tabular field in, ``embedding`` out.

    Args:
        model: the built v2 model (eval mode).

    Returns:
        The ONNX input spec.
    """
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


def bimodal_cnn_spec(model: Any) -> InputSpec:
    """BimodalCNN: the text batch key ``[B, L]`` int64, then one ``[B]`` float32 per field; ``logits`` out.

    Args:
        model: the built v2 model (eval mode).

    Returns:
        The ONNX input spec.

    Raises:
        UsageError: a tabular field has the text batch key's name.
    """
    text_key = model.text_batch_key
    fields = list(model.tab_field_list or [])
    if text_key in fields:
        raise UsageError(f"tabular field {text_key!r} has the name of the text batch key")
    names = [text_key, *fields]
    vocab_size = int(model.text_encoder.embeddings.num_embeddings)

    def make(batch: int, seq: int | None, gen: Any) -> list[Any]:
        tensors = [token_ids(batch, int(seq), vocab_size, gen)]
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
        seq_lengths=text_lengths(model.text_encoder, model.config),
    )
