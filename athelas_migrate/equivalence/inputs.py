"""`--inputs FILE`: real batches instead of generated ones.

The file is loaded with `torch.load(weights_only=True)` (tensors and plain
containers only) and holds one of:

- a list of batches;
- `{"inputs": batch or list of batches, "outputs": tensor or list of tensors}`
  (the fixtures' `.io.pt` format; `outputs`, when present, are the legacy model's
  stored eval-mode outputs and are checked too);
- a single batch.

A batch is what the legacy model's `forward` takes: a dict of fields (token ids
under the text key, tabular fields by name, optionally the label field) for
BimodalCNN, a `[B, L]` id tensor (or such a dict) for TextCNN, a `[B, D]` float
tensor (or a dict of fields) for TabAE.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..errors import InputError


def load_inputs(source: Any) -> tuple[list[Any], list[torch.Tensor] | None, str]:
    """The batches `verify --inputs` runs both models on, and the legacy outputs stored with them.

    Args:
        source: a path to a `torch.load`-able file (read with `weights_only=True`), or the loaded object: a
            list of batches, one batch, or `{"inputs": [...], "outputs": [...]}`.

    Returns:
        (batches, stored outputs or None, a one-line description for the report).

    Raises:
        InputError: the file is missing or not loadable, or its structure is none of the above.
    """
    where = "inputs"
    if isinstance(source, str | os.PathLike):
        where = os.fspath(source)
        if not os.path.isfile(where):
            raise InputError(f"--inputs {where}: no such file")
        try:
            obj = torch.load(where, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InputError(f"--inputs {where}: not loadable with torch.load(weights_only=True) "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from exc
    else:
        obj = source
    outputs = None
    if isinstance(obj, dict) and "inputs" in obj:
        batches, outputs = obj["inputs"], obj.get("outputs")
        if isinstance(batches, list | tuple):
            batches = list(batches)
            if outputs is not None:
                if not isinstance(outputs, list | tuple) or len(outputs) != len(batches):
                    raise InputError(f"--inputs {where}: 'outputs' must be a list as long as 'inputs'")
                outputs = list(outputs)
        else:
            batches = [batches]
            outputs = [outputs] if outputs is not None else None
    elif isinstance(obj, list | tuple):
        batches = list(obj)
    elif isinstance(obj, dict | torch.Tensor):
        batches = [obj]
    else:
        raise InputError(f"--inputs {where}: expected a list of batches or {{'inputs': ...}}, "
                         f"got {type(obj).__name__}")
    if not batches:
        raise InputError(f"--inputs {where}: no batches")
    if outputs is not None and not all(isinstance(o, torch.Tensor) for o in outputs):
        raise InputError(f"--inputs {where}: 'outputs' must be tensors")
    desc = f"{where}: {len(batches)} batch(es)" + (" with stored legacy outputs" if outputs is not None else "")
    return batches, outputs, desc
