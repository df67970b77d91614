"""Multi-branch 1-D CNN text encoder (v2 layout).

Layout (see ``docs/layouts/target-layout.md``)::

    embeddings   nn.Embedding(vocab_size, embedding_dim) or None
    convs        nn.ModuleList of one nn.Sequential per kernel size k:
                   [Conv1d(in_i, C_i, k), ReLU(), MaxPool1d(k)]  for every layer but the last
                   [Conv1d(in_i, C_i, k), ReLU(), AdaptiveMaxPool1d(1)]  for the last
                 so conv ``i`` sits at Sequential index ``3*i`` (as in the legacy TextCNN)
    projection   nn.Sequential(Dropout(p), Linear(C_last * len(kernel_sizes), output_dim)) or None
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["CNNEncoder", "branch_output_length", "min_input_length"]


def _as_positive_int(value, name: str, *, allow_none: bool = False) -> int | None:
    if value is None:
        if allow_none:
            return None
        raise ValueError(f"{name} is required (got None)")
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    try:
        ivalue = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a positive integer, got {value!r}") from None
    if ivalue < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(ivalue)


def _as_positive_int_list(values, name: str) -> list[int]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"{name} must be a non-empty list of positive integers, got {values!r}")
    if len(values) == 0:
        raise ValueError(f"{name} must be a non-empty list of positive integers, got {values!r}")
    return [_as_positive_int(v, f"{name}[{i}]") for i, v in enumerate(values)]


def branch_output_length(length: int, kernel_size: int, num_layers: int) -> int:
    """Length left after the last conv of one branch for an input of ``length`` tokens.

    Args:
        length: input sequence length.
        kernel_size: the branch's kernel (its max-pools use the same size and stride).
        num_layers: conv layers in the branch.

    Returns:
        The length, or a value ``<= 0`` when some layer of the branch would get an input shorter than its
        kernel (the branch is undefined for that length).
    """
    k = kernel_size
    cur = length
    for i in range(num_layers):
        if cur < k:
            return 0
        cur = cur - k + 1
        if i < num_layers - 1:
            if cur < k:
                return 0
            cur = (cur - k) // k + 1
    return cur


def min_input_length(kernel_sizes: Sequence[int], num_layers: int) -> int:
    """Smallest sequence length for which every branch is defined (the inverse of `branch_output_length`).

    Args:
        kernel_sizes: one branch per kernel size.
        num_layers: conv layers per branch.

    Returns:
        The smallest length that leaves every branch at least one output position.
    """
    best = 1
    for k in kernel_sizes:
        need = 1 + k - 1  # input of the last conv must hold one window
        for _ in range(num_layers - 1):
            need = need * k  # MaxPool1d(k) with stride k must produce `need` outputs
            need = need + k - 1  # the conv before it
        best = max(best, need)
    return best


class CNNEncoder(nn.Module):
    """Parallel-kernel CNN encoder for token ids or pre-embedded sequences.

    Args:
        vocab_size: size of the vocabulary; when given, an ``nn.Embedding`` is
            created and ``forward`` takes token ids ``[B, L]``.
        embedding_dim: embedding width (required with ``vocab_size``).
        input_dim: channel width of pre-embedded inputs ``[B, L, input_dim]``
            (used when ``vocab_size`` is None).
        kernel_sizes: one parallel conv branch per kernel size.
        num_channels: output channels of conv layer ``i`` (at least ``num_layers``
            entries; layer ``i`` uses ``num_channels[i]``).
        num_layers: conv layers per branch.
        output_dim: width of the projection head; None means no projection.
        dropout: dropout probability before the projection.
        max_seq_len: sequence length the encoder was designed for (informational:
            the last pool is adaptive, so any length ``>= min_seq_len`` works).

    Attributes:
        features_dim: width of the concatenated branch outputs.
        output_dim: projection width, or ``features_dim`` without projection.
        min_seq_len: shortest input length the branches accept.
    """

    def __init__(
        self,
        vocab_size: int | None = None,
        embedding_dim: int | None = None,
        input_dim: int | None = None,
        kernel_sizes: Sequence[int] = (3, 5, 7),
        num_channels: Sequence[int] = (100, 100),
        num_layers: int = 2,
        output_dim: int | None = None,
        dropout: float = 0.5,
        max_seq_len: int = 512,
    ) -> None:
        super().__init__()
        vocab_size = _as_positive_int(vocab_size, "vocab_size", allow_none=True)
        embedding_dim = _as_positive_int(embedding_dim, "embedding_dim", allow_none=True)
        input_dim = _as_positive_int(input_dim, "input_dim", allow_none=True)
        kernel_sizes = _as_positive_int_list(kernel_sizes, "kernel_sizes")
        num_channels = _as_positive_int_list(num_channels, "num_channels")
        num_layers = _as_positive_int(num_layers, "num_layers")
        output_dim = _as_positive_int(output_dim, "output_dim", allow_none=True)
        max_seq_len = _as_positive_int(max_seq_len, "max_seq_len")
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real):
            raise ValueError(f"dropout must be a probability in [0, 1], got {dropout!r}")
        dropout = float(dropout)
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be a probability in [0, 1], got {dropout!r}")

        if vocab_size is not None:
            if embedding_dim is None:
                raise ValueError("embedding_dim is required when vocab_size is given")
            if input_dim is not None and input_dim != embedding_dim:
                raise ValueError(
                    f"input_dim ({input_dim}) must equal embedding_dim ({embedding_dim}) "
                    "when vocab_size is given"
                )
            conv_input_dim = embedding_dim
        else:
            if embedding_dim is not None:
                raise ValueError(
                    "embedding_dim requires vocab_size; use input_dim for pre-embedded inputs"
                )
            if input_dim is None:
                raise ValueError("either vocab_size + embedding_dim or input_dim must be given")
            conv_input_dim = input_dim

        if len(num_channels) < num_layers:
            raise ValueError(
                f"num_channels has {len(num_channels)} entries but num_layers is {num_layers}; "
                "one channel count per conv layer is needed"
            )

        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.input_dim = conv_input_dim
        self.kernel_sizes = list(kernel_sizes)
        self.num_channels = list(num_channels)
        self.num_layers = num_layers
        self.dropout = dropout
        self.max_seq_len = max_seq_len
        self.min_seq_len = min_input_length(self.kernel_sizes, num_layers)

        # 1. embeddings
        self.embeddings = nn.Embedding(vocab_size, embedding_dim) if vocab_size is not None else None

        # 2. conv branches
        in_dims = [conv_input_dim] + self.num_channels[: num_layers - 1]
        branches = []
        for k in self.kernel_sizes:
            layers: list[nn.Module] = []
            for i in range(num_layers):
                layers.append(nn.Conv1d(in_dims[i], self.num_channels[i], k))
                layers.append(nn.ReLU())
                if i < num_layers - 1:
                    layers.append(nn.MaxPool1d(k))
                else:
                    layers.append(nn.AdaptiveMaxPool1d(1))
            branches.append(nn.Sequential(*layers))
        self.convs = nn.ModuleList(branches)

        # 3. projection
        self.features_dim = self.num_channels[num_layers - 1] * len(self.kernel_sizes)
        if output_dim is not None:
            self.projection = nn.Sequential(
                nn.Dropout(dropout), nn.Linear(self.features_dim, output_dim)
            )
            self.output_dim = output_dim
        else:
            self.projection = None
            self.output_dim = self.features_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` token ids (with embeddings) or ``[B, L, input_dim]`` -> ``[B, output_dim]``."""
        if self.embeddings is not None:
            if x.dim() != 2:
                raise ValueError(f"expected token ids of shape [B, L], got {tuple(x.shape)}")
            if x.is_floating_point():
                raise ValueError("token ids must be an integer tensor")
            x = self.embeddings(x)
        else:
            if x.dim() != 3 or x.shape[-1] != self.input_dim:
                raise ValueError(
                    f"expected inputs of shape [B, L, {self.input_dim}], got {tuple(x.shape)}"
                )
        length = x.shape[1]
        if length < self.min_seq_len:
            raise ValueError(
                f"sequence length {length} is too short for kernel sizes {self.kernel_sizes} "
                f"with {self.num_layers} layers (minimum {self.min_seq_len})"
            )
        x = x.permute(0, 2, 1)  # [B, D, L]
        feats = [branch(x).squeeze(2) for branch in self.convs]
        out = torch.cat(feats, dim=1)
        if self.projection is not None:
            out = self.projection(out)
        return out

    def extra_repr(self) -> str:
        return (
            f"kernel_sizes={self.kernel_sizes}, num_layers={self.num_layers}, "
            f"features_dim={self.features_dim}, output_dim={self.output_dim}, "
            f"max_seq_len={self.max_seq_len}"
        )
