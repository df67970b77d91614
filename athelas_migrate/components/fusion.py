"""Fusion components for multimodal models."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .cnn_encoder import _as_positive_int, _as_positive_int_list

__all__ = ["ConcatenationFusion"]


class ConcatenationFusion(nn.Module):
    """Concatenate modality features and map them to ``output_dim``.

    ``fusion = nn.Sequential(nn.ReLU(), nn.Linear(sum(input_dims), output_dim))``
    (keys ``fusion.1.{weight,bias}``), or a bare ``nn.Linear`` when
    ``use_activation=False`` (keys ``fusion.{weight,bias}``).
    """

    def __init__(self, input_dims: Sequence[int], output_dim: int, use_activation: bool = True) -> None:
        super().__init__()
        self.input_dims = _as_positive_int_list(input_dims, "input_dims")
        self.output_dim = _as_positive_int(output_dim, "output_dim")
        self.use_activation = bool(use_activation)
        total = sum(self.input_dims)
        self.total_input_dim = total
        if self.use_activation:
            self.fusion = nn.Sequential(nn.ReLU(), nn.Linear(total, self.output_dim))
        else:
            self.fusion = nn.Linear(total, self.output_dim)

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        """``forward(f_1, ..., f_n)`` with ``f_i: [B, input_dims[i]]`` -> ``[B, output_dim]``."""
        if len(features) != len(self.input_dims):
            raise ValueError(
                f"ConcatenationFusion expects {len(self.input_dims)} feature tensors, got {len(features)}"
            )
        # Under the TorchScript tracer (ONNX export) sizes are traced tensors: comparing them in Python
        # would only be evaluated once, at trace time, with a TracerWarning, so the size checks are left
        # to eager mode (the traced graph's concatenation and Linear still require matching sizes).
        # Batch sizes are compared pairwise, not through a set (traced sizes and SymInts do not hash).
        tracing = torch.jit.is_tracing()
        for i, (feat, dim) in enumerate(zip(features, self.input_dims)):
            if not isinstance(feat, torch.Tensor) or feat.dim() != 2 or (not tracing and feat.shape[1] != dim):
                shape = tuple(feat.shape) if isinstance(feat, torch.Tensor) else type(feat).__name__
                raise ValueError(f"feature {i} must have shape [B, {dim}], got {shape}")
        if not tracing:
            batch = features[0].shape[0]
            if any(feat.shape[0] != batch for feat in features[1:]):
                raise ValueError(
                    f"feature tensors disagree on batch size: {[tuple(f.shape) for f in features]}"
                )
        combined = features[0] if len(features) == 1 else torch.cat(features, dim=1)
        return self.fusion(combined)

    def extra_repr(self) -> str:
        return f"input_dims={self.input_dims}, output_dim={self.output_dim}"
