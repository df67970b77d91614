"""Keep verify's memory near the checkpoint's own size: no initial values, sparse embedding gradients, row slices.

A checkpoint's tensors are mapped from the file (copy-on-write), so the models cost file pages, not
anonymous memory. What else a big embedding table would cost in anonymous memory, per side: its random
initial values (overwritten at once by the checkpoint's), a private copy for the optimizer step, a dense
gradient that is zero outside the rows a batch touches, and a momentum buffer. This module removes the
first three and shrinks the last to the rows the training check compares; see docs/verify.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

#: parameters with at least this many elements are stepped on a slice of their rows (see `step_rows`)
LARGE = 1 << 20
#: untouched rows of a large parameter that the optimizer step is compared on, besides the touched ones
SAMPLED_ROWS = 64
#: optimizers whose update of an element reads only that element (and per-parameter scalars such as the
#: step count): stepping a slice of rows gives exactly the full step's values on those rows
ELEMENTWISE = frozenset({"SGD", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop", "Adagrad"})
_INIT = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
         "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_")


@contextlib.contextmanager
def skip_init() -> Iterator[None]:
    """Construct modules without writing initial values (`torch.nn.init` becomes a no-op).

    Only for a model whose every parameter and persistent buffer is then replaced by a strict
    `load_state_dict(..., assign=True)`: untouched pages of a fresh tensor cost no memory, so a 1 GB
    embedding does not allocate 1 GB of random values that are thrown away. Deterministic mode's
    filling of fresh tensors with NaN (which touches every page) is off for the same reason.

    Yields:
        Nothing; `torch.nn.init` and the deterministic fill are restored on exit.
    """
    import torch.utils.deterministic as det

    saved = {name: getattr(nn.init, name) for name in _INIT if hasattr(nn.init, name)}
    fill = det.fill_uninitialized_memory
    for name in saved:
        setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
    det.fill_uninitialized_memory = False
    try:
        yield
    finally:
        det.fill_uninitialized_memory = fill
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


def compute_parameters(model: nn.Module) -> int:
    """Parameters that cost compute per example: embedding tables (a lookup) left out.

    Args:
        model: a built model, legacy or refactored.

    Returns:
        The count (verify picks its thread count by it).
    """
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding | nn.EmbeddingBag)}
    return sum(p.numel() for p in model.parameters() if id(p) not in tables)


@contextlib.contextmanager
def sparse_embedding_grads(*models: nn.Module) -> Iterator[None]:
    """Embedding tables get sparse gradients (the rows a batch touches) while inside; same values as dense.

    Args:
        *models: the models whose dense `nn.Embedding`/`nn.EmbeddingBag` modules switch.

    Yields:
        Nothing; the switched modules are dense again on exit.
    """
    changed = [m for model in models for m in model.modules()
               if isinstance(m, nn.Embedding | nn.EmbeddingBag) and not m.sparse]
    for m in changed:
        m.sparse = True
    try:
        yield
    finally:
        for m in changed:
            m.sparse = False


def touched_rows(grad: torch.Tensor) -> torch.Tensor:
    """The rows of `grad` that can be non-zero (a sparse gradient's stored rows).

    Args:
        grad: a dense or sparse gradient.

    Returns:
        Sorted row indices, on the CPU.
    """
    if grad.is_sparse:
        return grad.coalesce().indices()[0].cpu()
    flat = grad.detach().reshape(grad.shape[0], -1)
    return torch.nonzero(flat.ne(0).any(dim=1)).reshape(-1).cpu()


def rows_of(grad: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Dense `grad[rows]` (a sparse gradient densified on those rows only).

    Args:
        grad: a dense or sparse gradient.
        rows: row indices.

    Returns:
        The dense rows, on `grad`'s device.
    """
    idx = rows.to(grad.device)
    if grad.is_sparse:
        return grad.coalesce().index_select(0, idx).to_dense()
    return grad.index_select(0, idx)


def step_rows(shape: torch.Size, *grads: torch.Tensor | None) -> torch.Tensor | None:
    """Rows of a parameter the optimizer step is compared on: None (all of them) below LARGE elements,
    else every row either gradient touches plus SAMPLED_ROWS others spread over the table (first and last
    included), which weight decay and momentum move without a gradient.

    Args:
        shape: the parameter's shape.
        *grads: its gradient on each side (None where a side has none).

    Returns:
        Sorted row indices, or None for all rows.
    """
    numel = 1
    for s in shape:
        numel *= int(s)
    if len(shape) == 0 or numel < LARGE:
        return None
    parts = [touched_rows(g) for g in grads if g is not None]
    parts.append(torch.linspace(0, int(shape[0]) - 1, SAMPLED_ROWS).round().long())
    return torch.unique(torch.cat(parts))
