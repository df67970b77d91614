"""The CNN text branch (embeddings, convolution branches, head): its configuration read off tensor shapes and its
layout computed from a configuration, in pure Python. TextCNN and BimodalCNN share it at every layout version,
under different key prefixes.

To change the branch's layout (a new component version), change `text_expected`; tests/test_layouts_vs_classes.py
holds it to the real classes.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

from ...errors import InputError

_CONV = re.compile(r"convs\.(\d+)\.(\d+)\.weight")


def text_shapes(sd: dict, prefix: str, where: str) -> dict[str, Any]:
    """Text-branch configuration read off tensor shapes.

    Args:
        sd: the state dict.
        prefix: the branch's key prefix ("", "text_subnetwork.", "text_encoder.").
        where: names the file in messages.

    Returns:
        vocab_size, embed_size, kernel_size, num_layers, num_channels, hidden_common_dim.

    Raises:
        InputError: the branch's tensors are missing or inconsistent.
    """
    emb = sd.get(f"{prefix}embeddings.weight")
    if emb is None or len(emb.shape) != 2:
        raise InputError(f"{where}: missing or malformed {prefix}embeddings.weight")
    branches: dict[int, dict[int, tuple]] = {}
    for key, t in sd.items():
        if key.startswith(prefix):
            m = _CONV.fullmatch(key[len(prefix):])
            if m:
                branches.setdefault(int(m.group(1)), {})[int(m.group(2))] = tuple(t.shape)
    if not branches:
        raise InputError(f"{where}: no convolution weights under {prefix}convs")
    kernels, channels = [], None
    for j in sorted(branches):
        layers = branches[j]
        if sorted(layers) != [3 * i for i in range(len(layers))] or any(len(s) != 3 for s in layers.values()):
            raise InputError(f"{where}: branch {prefix}convs.{j} has unexpected layer indices {sorted(layers)}")
        kernels.append(layers[0][2])
        ch = [layers[3 * i][0] for i in range(len(layers))]
        if channels is not None and ch != channels:
            raise InputError(f"{where}: conv branches disagree on channel widths")
        channels = ch
    head = sd.get(f"{prefix}network.1.weight") or sd.get(f"{prefix}projection.1.weight")
    if head is None:
        raise InputError(f"{where}: missing the text head {prefix}network.1.weight")
    return {"vocab_size": emb.shape[0], "embed_size": emb.shape[1], "kernel_size": kernels,
            "num_layers": len(channels), "num_channels": channels, "hidden_common_dim": head.shape[0]}


def text_expected(config: dict, prefix: str, head: str, shapes: OrderedDict) -> None:
    """Append the text branch's keys and shapes (the inverse of `text_shapes`).

    Args:
        config: the canonical config.
        prefix: the branch's key prefix.
        head: the name of its projection head ("network" or "projection").
        shapes: the layout being built.
    """
    V, E = config["vocab_size"], config["embed_size"]
    C = list(config["num_channels"])[: config["num_layers"]]
    shapes[f"{prefix}embeddings.weight"] = (V, E)
    for j, k in enumerate(config["kernel_size"]):
        for i in range(config["num_layers"]):
            cin = ([E] + C[:-1])[i]
            shapes[f"{prefix}convs.{j}.{3 * i}.weight"] = (C[i], cin, k)
            shapes[f"{prefix}convs.{j}.{3 * i}.bias"] = (C[i],)
    shapes[f"{prefix}{head}.1.weight"] = (config["hidden_common_dim"], C[-1] * len(config["kernel_size"]))
    shapes[f"{prefix}{head}.1.bias"] = (config["hidden_common_dim"],)
