"""State-dict layouts written in pure Python, so that detecting and migrating never imports torch.

A family describes each version's state dict with a `LayoutBuilder`, in the order the real class registers
its parameters and buffers; tests/test_layouts_vs_classes.py builds the real classes (on the meta device)
and checks the computed layout equals theirs key for key. To add a module type, add a method here that
appends its keys in the order torch's module writes them.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from .base import Expected


class LayoutBuilder:
    """Ordered keys and shapes of a state dict, plus which keys are buffers and which are integer buffers."""

    def __init__(self) -> None:
        self.shapes: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self.buffers: set[str] = set()
        self.int_keys: set[str] = set()

    def param(self, key: str, *shape: int) -> LayoutBuilder:
        """Append a parameter.

        Args:
            key: its state-dict key.
            *shape: its shape.

        Returns:
            The builder, for chaining.
        """
        self.shapes[key] = tuple(int(s) for s in shape)
        return self

    def buffer(self, key: str, *shape: int, integer: bool = False) -> LayoutBuilder:
        """Append a persistent buffer.

        Args:
            key: its state-dict key.
            *shape: its shape.
            integer: an integer buffer (e.g. `num_batches_tracked`), exempt from the float-dtype check.

        Returns:
            The builder, for chaining.
        """
        self.param(key, *shape)
        self.buffers.add(key)
        if integer:
            self.int_keys.add(key)
        return self

    def linear(self, prefix: str, out: int, inp: int, bias: bool = True) -> LayoutBuilder:
        """Append `nn.Linear(inp, out)`.

        Args:
            prefix: the module's key prefix.
            out: output features.
            inp: input features.
            bias: whether it has a bias.

        Returns:
            The builder, for chaining.
        """
        self.param(f"{prefix}.weight", out, inp)
        return self.param(f"{prefix}.bias", out) if bias else self

    def norm(self, prefix: str, n: int) -> LayoutBuilder:
        """Append `nn.LayerNorm(n)` (elementwise affine).

        Args:
            prefix: the module's key prefix.
            n: the normalised width.

        Returns:
            The builder, for chaining.
        """
        return self.param(f"{prefix}.weight", n).param(f"{prefix}.bias", n)

    def batch_norm(self, prefix: str, n: int) -> LayoutBuilder:
        """Append `nn.BatchNorm1d(n)`: affine parameters, then running statistics and the step counter.

        Args:
            prefix: the module's key prefix.
            n: the number of features.

        Returns:
            The builder, for chaining.
        """
        self.norm(prefix, n)
        self.buffer(f"{prefix}.running_mean", n).buffer(f"{prefix}.running_var", n)
        return self.buffer(f"{prefix}.num_batches_tracked", integer=True)

    def embedding(self, prefix: str, num: int, dim: int) -> LayoutBuilder:
        """Append `nn.Embedding(num, dim)`.

        Args:
            prefix: the module's key prefix.
            num: the vocabulary size.
            dim: the embedding width.

        Returns:
            The builder, for chaining.
        """
        return self.param(f"{prefix}.weight", num, dim)

    def multihead_attention(self, prefix: str, d: int) -> LayoutBuilder:
        """Append `nn.MultiheadAttention(d, heads)` with packed input projections (the head count does not show).

        Args:
            prefix: the module's key prefix.
            d: the embedding width.

        Returns:
            The builder, for chaining.
        """
        self.param(f"{prefix}.in_proj_weight", 3 * d, d).param(f"{prefix}.in_proj_bias", 3 * d)
        return self.linear(f"{prefix}.out_proj", d, d)

    def lstm(self, prefix: str, inp: int, hidden: int, layers: int, bidirectional: bool) -> LayoutBuilder:
        """Append `nn.LSTM(inp, hidden, layers, bidirectional=...)` with biases.

        Args:
            prefix: the module's key prefix.
            inp: input features.
            hidden: hidden width per direction.
            layers: the number of layers.
            bidirectional: whether each layer has a reverse direction.

        Returns:
            The builder, for chaining.
        """
        for layer in range(layers):
            width = inp if layer == 0 else hidden * (2 if bidirectional else 1)
            for suffix in ("", "_reverse") if bidirectional else ("",):
                self.param(f"{prefix}.weight_ih_l{layer}{suffix}", 4 * hidden, width)
                self.param(f"{prefix}.weight_hh_l{layer}{suffix}", 4 * hidden, hidden)
                self.param(f"{prefix}.bias_ih_l{layer}{suffix}", 4 * hidden)
                self.param(f"{prefix}.bias_hh_l{layer}{suffix}", 4 * hidden)
        return self

    def bert(self, prefix: str, config: dict[str, Any]) -> LayoutBuilder:
        """Append `transformers.BertModel(BertConfig(**config), add_pooling_layer=True)`; `position_ids` and
        `token_type_ids` are non-persistent buffers there, so not in the state dict.

        Args:
            prefix: the module's key prefix.
            config: the BertConfig values (`hidden_size`, `intermediate_size`, `num_hidden_layers`, ...).

        Returns:
            The builder, for chaining.
        """
        h, inter = int(config["hidden_size"]), int(config["intermediate_size"])
        e = f"{prefix}.embeddings"
        self.embedding(f"{e}.word_embeddings", config["vocab_size"], h)
        self.embedding(f"{e}.position_embeddings", config.get("max_position_embeddings", 512), h)
        self.embedding(f"{e}.token_type_embeddings", config.get("type_vocab_size", 2), h)
        self.norm(f"{e}.LayerNorm", h)
        for i in range(int(config["num_hidden_layers"])):
            layer = f"{prefix}.encoder.layer.{i}"
            for name in ("query", "key", "value"):
                self.linear(f"{layer}.attention.self.{name}", h, h)
            self.linear(f"{layer}.attention.output.dense", h, h).norm(f"{layer}.attention.output.LayerNorm", h)
            self.linear(f"{layer}.intermediate.dense", inter, h)
            self.linear(f"{layer}.output.dense", h, inter).norm(f"{layer}.output.LayerNorm", h)
        return self.linear(f"{prefix}.pooler.dense", h, h)

    def build(self) -> Expected:
        """Finish the layout.

        Returns:
            The layout, for `Family.expected`.
        """
        return Expected(self.shapes, set(self.buffers), set(self.int_keys))
