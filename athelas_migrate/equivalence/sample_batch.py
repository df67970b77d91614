"""A generic verify adapter and ONNX input spec for models called as `model(x)` or `model(*x)`.

Both read the family folder's sample batch file (`sample_inputs.pt` beside the subclass's module, a list of
inputs saved with `torch.save`, loaded with `weights_only=True`), the same format as `rules infer --inputs`: each
input is passed as `model(x)`, or `model(*x)` when it is a tuple. A folder uses them in a few lines::

    # myfamily/verify.py
    from athelas_migrate.equivalence.sample_batch import SampleBatchAdapter

    class MyModelAdapter(SampleBatchAdapter):
        family = "MyModel"

    # myfamily/onnx.py
    from pathlib import Path
    from athelas_migrate.equivalence.sample_batch import sample_batch_spec

    def spec(model):
        return sample_batch_spec(model, Path(__file__).with_name("sample_inputs.pt"))

Training is compared with a probe loss (a fixed random linear function of the output), so the two sides need no
common loss or labels; a legacy class that builds no optimizer (its training script did) steps with the refactored
class's optimizer type and defaults. Override `forward` when the output is not one tensor, `construct_old` when the
legacy class does not take the config as keyword arguments.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..export import InputSpec, PositionalForward
from ..families.simple import accepted
from ..infer.probe import load_example_inputs, run
from .adapters import Batch, CannotVerifyError, Context, VerifyAdapter

#: The sample batch file's name, in the family folder.
SAMPLE_INPUTS = "sample_inputs.pt"


def load_sample_inputs(path: Path) -> list[Any]:
    """The list of example inputs stored at `path` (read like `rules infer --inputs`).

    Args:
        path: a file written by `torch.save(list_of_inputs)`.

    Returns:
        The inputs (a tensor, or a tuple of tensors, each).

    Raises:
        UsageError: the file is missing.
        InputError: it is unsafe or not a non-empty list.
    """
    return load_example_inputs(str(path), "sample batch")


def batch_size(x: Any) -> int:
    """The batch size of one input.

    Args:
        x: a tensor, or a (nested) tuple, list or dict of them.

    Returns:
        The first dimension of the first tensor found (1 for a scalar or when there is none).
    """
    if isinstance(x, torch.Tensor):
        return int(x.shape[0]) if x.dim() else 1
    if isinstance(x, list | tuple) and x:
        return batch_size(x[0])
    if isinstance(x, dict) and x:
        return batch_size(next(iter(x.values())))
    return 1


class SampleBatchAdapter(VerifyAdapter):
    """Feeds the folder's sample batches to both sides; the legacy class takes the config as keyword arguments."""

    def classifier(self, ctx: Context) -> bool:
        return False  # any output: compared as it is

    def sample_path(self) -> Path:
        """The folder's sample batch file: `sample_inputs.pt` beside the module defining this adapter class.

        The subclass's module, not this one, so each scaffolded family folder finds its own batches.

        Returns:
            The path (it may not exist; loading it reports that).
        """
        return Path(sys.modules[type(self).__module__].__file__).with_name(SAMPLE_INPUTS)

    def construct_old(self, ctx: Context, cls: type, state: dict[str, torch.Tensor]) -> nn.Module:
        args = {k: v for k, v in copy.deepcopy(ctx.config_old).items() if not k.startswith("_")}
        name = getattr(ctx.family, "config_arg", {}).get(ctx.old_version)
        return cls(**{name: args}) if name else cls(**accepted(cls, args))

    def make_batches(self, ctx: Context) -> list[Batch]:
        return [self.from_user(ctx, x, i) for i, x in enumerate(load_sample_inputs(self.sample_path()))]

    def from_user(self, ctx: Context, obj: Any, index: int) -> Batch:
        n = batch_size(obj)
        return Batch(f"sample-{index}", obj, n, None, f"B={n}, from {SAMPLE_INPUTS}")

    def forward(self, side: str, model: nn.Module, batch: Batch, ctx: Context) -> torch.Tensor:
        out = run(model, batch.data)
        if not isinstance(out, torch.Tensor):
            raise CannotVerifyError(f"{self.family}: the model returned a {type(out).__name__}, not a tensor; "
                                    "override SampleBatchAdapter.forward to pick the output")
        return out

    def optimizer(self, side: str, model: nn.Module, ctx: Context) -> torch.optim.Optimizer | None:
        """Each side's own `configure_optimizers`; a legacy class that builds none (its training script built
        one) gets the refactored class's optimizer type and defaults, so one step is still compared."""
        own = super().optimizer(side, model, ctx)
        if own is not None or side == "new" or ctx.new_model is None:
            return own
        other = super().optimizer("new", ctx.new_model, ctx)
        if other is None:
            return None
        return type(other)(model.parameters(), **other.defaults)

    def loss(self, side: str, model: nn.Module, batch: Batch, out: torch.Tensor,
             ctx: Context) -> tuple[torch.Tensor, str]:
        probe = torch.randn(out.shape, generator=ctx.generator(99)).to(out.device, out.dtype)
        return (out * probe).sum(), "probe loss sum(output * R) with a fixed random R (the same on both sides)"


def sample_batch_spec(model: nn.Module, path: Path) -> InputSpec:
    """An ONNX input spec that feeds `model` tensors shaped like the first sample input of `path`.

    Args:
        model: the refactored model, called as `model(*tensors)`.
        path: the sample batch file.

    Returns:
        One input per tensor of the sample (`input_0`, ...), the batch axis dynamic; random inputs of the sample's
        dtypes, integers drawn within the sample's range.
    """
    first = load_sample_inputs(path)[0]
    samples = list(first) if isinstance(first, tuple) else [first]
    names = [f"input_{i}" for i in range(len(samples))]

    def make(batch: int, seq: int | None, gen: torch.Generator) -> list[torch.Tensor]:
        out = []
        for s in samples:
            shape = (batch, *s.shape[1:])
            if s.is_floating_point():
                out.append(torch.randn(shape, generator=gen).to(s.dtype))
            else:
                low, high = int(s.min()), int(s.max())
                out.append(torch.randint(low, high + 1, shape, generator=gen).to(s.dtype))
        return out

    axes = {n: {0: "batch"} for n in names}
    axes["output"] = {0: "batch"}
    return InputSpec(names=names, output_names=["output"], dynamic_axes=axes, wrapper=PositionalForward(model),
                     make_inputs=make)
