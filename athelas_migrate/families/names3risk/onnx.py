"""ONNX input spec of the Names3Risk families (named by each family's `onnx_spec`; see athelas_migrate.export)."""

from __future__ import annotations

from typing import Any

import torch

from ...export import BatchDictForward, InputSpec


def names3risk_spec(model: Any) -> InputSpec:
    """The deployed format: ids ``[B, T]`` int64 (pad id 1; no lengths: the notebook sent none),
    Transformer also the mask ``[B, T]`` bool (True = token), then one ``[B]`` float32 per field.

    Args:
        model: the built v2 model (eval mode).

    Returns:
        The ONNX input spec.
    """
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
