"""What the equivalence runner hands a family's adapter: a `Batch` of inputs, the `Context` of the pair being
compared, and the helpers that move batches between devices and find a model's optimizer.

Torch-only (no package imports beyond torch), so every adapter and check can use them. To carry more about the
pair, add a field with a default to `Context` (the runner fills it in); to carry more per batch, likewise on
`Batch`. Adapters import these names from `equivalence.adapters`, which re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class Batch:
    """One input batch. `data` is whatever the family's adapter feeds its models."""

    name: str
    data: Any
    size: int
    labels: torch.Tensor | None = None
    description: str = ""
    length: int | None = None  # text sequence length, where there is one


@dataclass
class Context:
    """What the runner knows about the pair being compared (filled in as it goes)."""

    old_path: str
    new_path: str
    raw_old: Any
    raw_new: Any
    family: Any  # families.base.Family
    old_version: str
    new_version: str
    config_old: dict[str, Any]
    config_new: dict[str, Any]
    rename: dict[str, str]  # old state key -> new state key (1:1 entries of the rename map)
    ops: dict[str, list[str]]  # old state key -> rule operations applied to it
    device: torch.device
    compute_dtype: torch.dtype
    seed: int
    old_model: nn.Module | None = None
    new_model: nn.Module | None = None
    new_result: Any = None  # MigrationResult of NEW (planned to v2)
    notes: list[str] = field(default_factory=list)

    def generator(self, salt: int = 0) -> torch.Generator:
        """A CPU generator seeded from `seed`, so every generated input is the same on every run.

        Args:
            salt: tells apart the streams of different uses (labels, probes, batches).

        Returns:
            A fresh, seeded `torch.Generator`.
        """
        return torch.Generator().manual_seed(int(self.seed) * 1000003 + salt)


def first_optimizer(res: Any) -> torch.optim.Optimizer | None:
    """The first optimizer in what `configure_optimizers` returned (Lightning allows several shapes).

    Args:
        res: an optimizer, a dict with "optimizer", or a list/tuple of either.

    Returns:
        The optimizer, or None when there is none.
    """
    if isinstance(res, torch.optim.Optimizer):
        return res
    if isinstance(res, dict):
        return first_optimizer(res.get("optimizer"))
    if isinstance(res, list | tuple) and res:
        return first_optimizer(res[0])
    return None


def move(obj: Any, device: torch.device) -> Any:
    """Move every tensor in a nest of dicts, lists and tuples to `device`.

    Args:
        obj: a tensor, or a container of them (other values pass through).
        device: where the models run.

    Returns:
        The same structure with the tensors moved.
    """
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: move(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [move(v, device) for v in obj]
    if isinstance(obj, tuple):
        return tuple(move(v, device) for v in obj)
    return obj
