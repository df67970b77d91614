"""Per-family knowledge the equivalence runner needs, as a small registry keyed by family name.

The runner is generic: it reads both checkpoints, rebuilds the models, runs
batches, pairs modules and parameters through the rename map and compares.
What differs per family lives in a `VerifyAdapter`:

- how the legacy class is constructed from the canonical config (`construct_old`);
- what a batch is: generated deterministically from the checkpoint's sizes
  (`make_batches`), read from a user's file (`from_user`), stretched to another
  sequence length (`with_length`);
- how each side is called (`forward`) and what its training loss is (`loss`);
- which sequence lengths the legacy model is defined for (`length_expectation`);
- how each side builds its optimizer (`optimizer`, default `configure_optimizers`).

A family folder holds its adapter in `verify.py` and names it on its `Family`::

    # athelas_migrate/families/myfamily/verify.py
    from athelas_migrate.equivalence.adapters import VerifyAdapter

    class MyFamilyAdapter(VerifyAdapter):
        family = "MyFamily"
        ...

    # athelas_migrate/families/myfamily/__init__.py (torch-free)
    class MyFamily(Family):
        verify_adapter = "athelas_migrate.families.myfamily.verify:MyFamilyAdapter"

`get_adapter` imports the adapter the first time a family is verified (so the migration path never imports
torch). `register_adapter` overrides a family's adapter at run time.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn

from ..errors import EXIT_REFUSED, AthelasError
from ..families.base import load_class
from .batching import Batch as Batch  # re-exported: family adapters import these from here
from .batching import Context as Context
from .batching import first_optimizer as first_optimizer
from .batching import move as move


class CannotVerifyError(AthelasError):
    """The runner could not compare the two checkpoints (exit code 3)."""

    exit_code = EXIT_REFUSED


class VerifyAdapter:
    """Base class; see the module docstring. Subclasses set `family` and fill in the hooks."""

    family: str = ""
    #: whether the model reads token sequences (enables the sequence-length domain check)
    has_text: bool = False

    def classifier(self, ctx: Context) -> bool:
        """Whether outputs are logits, compared also as probabilities (softmax).

        Args:
            ctx: the pair being compared.

        Returns:
            True for class logits; False: the output is compared as one "output".
        """
        return True

    # ------------------------------------------------------------------ build
    def old_class(self, ctx: Context) -> type:
        """The legacy model class of the OLD checkpoint's layout version.

        Args:
            ctx: the pair being compared.

        Returns:
            The class the family lists in `legacy_classes` for `ctx.old_version`.
        """
        return load_class(ctx.family.legacy_classes[ctx.old_version])

    def construct_old(self, ctx: Context, cls: type, state: dict[str, torch.Tensor]) -> nn.Module:
        """A fresh legacy model (constructed normally, on the CPU) ready for `load_state_dict`.

        Args:
            ctx: the pair being compared (`config_old` is the constructor's config).
            cls: the legacy class (`old_class`).
            state: the OLD state dict, for families whose sizes are read from it.

        Returns:
            The model, with initial weights.
        """
        return cls(copy.deepcopy(ctx.config_old))

    def build_old(self, ctx: Context, state: dict[str, torch.Tensor]) -> nn.Module:
        """The legacy model holding the OLD checkpoint's weights (strict load: every key must fit).

        Args:
            ctx: the pair being compared.
            state: the OLD state dict.

        Returns:
            The loaded legacy model.
        """
        model = self.construct_old(ctx, self.old_class(ctx), state)
        model.load_state_dict(state, strict=True, assign=True)
        return model

    # ----------------------------------------------------------------- inputs
    def make_batches(self, ctx: Context) -> list[Batch]:
        """Batches generated deterministically (from `ctx.generator`) within the checkpoint's sizes.

        Args:
            ctx: the pair being compared.

        Returns:
            The batches every check runs on.
        """
        raise NotImplementedError

    def from_user(self, ctx: Context, obj: Any, index: int) -> Batch:
        """One batch of a user's `--inputs` file.

        Args:
            ctx: the pair being compared.
            obj: one entry of the file, as read.
            index: its position in the file, for the batch name and messages.

        Returns:
            The batch.
        """
        raise NotImplementedError

    def labelled(self, ctx: Context, batch: Batch) -> Batch:
        """`batch` with labels, for the training checks.

        Args:
            ctx: the pair being compared (`num_classes`, the seed).
            batch: a batch of this family's inputs.

        Returns:
            `batch` itself when it has labels, else a copy with labels generated from the seed.
        """
        if batch.labels is not None:
            return batch
        n = int(ctx.config_old.get("num_classes") or 2)
        labels = torch.randint(0, n, (batch.size,), generator=ctx.generator(77))
        return Batch(batch.name, batch.data, batch.size, labels, batch.description + " (generated labels)",
                     batch.length)

    def with_length(self, ctx: Context, length: int) -> Batch | None:
        """A small batch whose text is `length` tokens long, for the sequence-length domain check.

        Args:
            ctx: the pair being compared.
            length: the token count.

        Returns:
            The batch, or None when the model has no text branch.
        """
        return None

    def length_expectation(self, ctx: Context, length: int) -> str:
        """What the legacy model does with text of `length` tokens.

        Args:
            ctx: the pair being compared.
            length: the token count.

        Returns:
            'exact' (legacy defined and equal to v2), 'prefix' (legacy ignores the tail) or 'undefined'.
        """
        return "exact"

    def max_len(self, ctx: Context) -> int | None:
        """The longest text the models accept.

        Args:
            ctx: the pair being compared.

        Returns:
            The token count, or None when there is no limit (or no text).
        """
        return None

    # ---------------------------------------------------------------- running
    def forward(self, side: str, model: nn.Module, batch: Batch, ctx: Context) -> torch.Tensor:
        """Run one side's model on a batch.

        Args:
            side: "old" or "new" (the two sides are called differently).
            model: that side's model.
            batch: the batch, on the model's device.
            ctx: the pair being compared.

        Returns:
            The output compared between the sides (logits for a classifier).
        """
        raise NotImplementedError

    def loss(self, side: str, model: nn.Module, batch: Batch, out: torch.Tensor,
             ctx: Context) -> tuple[torch.Tensor, str]:
        """Training loss on a labelled batch: the model's weighted cross entropy where it has one,
        else a fixed random linear probe of the output (so every parameter gets a gradient).

        Args:
            side: "old" or "new".
            model: that side's model.
            batch: a labelled batch (`labelled`).
            out: the model's output on it.
            ctx: the pair being compared.

        Returns:
            (the loss, a line saying which loss it is).
        """
        loss_op = getattr(model, "loss_op", None)
        labels = batch.labels.to(out.device) if batch.labels is not None else None
        if loss_op is not None and labels is not None and out.dim() == 2 and \
                out.shape[1] == int(ctx.config_old.get("num_classes") or 0):
            return loss_op(out, labels.long()), "cross entropy with the class weights (loss_op)"
        probe = torch.randn(out.shape, generator=ctx.generator(99)).to(out.device, out.dtype)
        return (out * probe).sum(), "probe loss sum(output * R) with a fixed random R (no loss of its own)"

    def optimizer(self, side: str, model: nn.Module, ctx: Context) -> torch.optim.Optimizer | None:
        """The optimizer the side's own `configure_optimizers` builds (None when it builds none).

        An exception propagates: the training section reports it as an error, never as a pass.

        Args:
            side: "old" or "new".
            model: that side's model.
            ctx: the pair being compared.

        Returns:
            The first optimizer it returns, or None.
        """
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Lightning warns when a class does not implement it
            res = model.configure_optimizers()
        return first_optimizer(res)

    def select_rows(self, batch: Batch, rows: list[int]) -> Batch:
        """The batch restricted to some rows (verify localises a difference on the worst row).

        Args:
            batch: a batch of this family's inputs.
            rows: the row indices to keep, in order.

        Returns:
            A batch in which every tensor or list whose first dimension is the batch size holds those rows.
        """
        index = torch.tensor(rows, dtype=torch.long)

        def pick(obj: Any) -> Any:
            if isinstance(obj, torch.Tensor) and obj.dim() and obj.shape[0] == batch.size:
                return obj.index_select(0, index.to(obj.device))
            if isinstance(obj, dict):
                return {k: pick(v) for k, v in obj.items()}
            if isinstance(obj, list) and len(obj) == batch.size:
                return [obj[i] for i in rows]
            if isinstance(obj, tuple):
                return tuple(pick(v) for v in obj)
            return obj

        labels = pick(batch.labels) if batch.labels is not None else None
        return Batch(f"{batch.name}{rows}", pick(batch.data), len(rows), labels, batch.description, batch.length)

    def to_device(self, batch: Batch, device: torch.device) -> Batch:
        """The batch with every tensor (and the labels) moved to `device`.

        Args:
            batch: a batch of this family's inputs.
            device: where the models run.

        Returns:
            A new batch.
        """
        return Batch(batch.name, move(batch.data, device), batch.size,
                     batch.labels.to(device) if batch.labels is not None else None, batch.description,
                     batch.length)


#: Adapters by family name: registered at run time, or built from the family's `verify_adapter` on first use.
ADAPTERS: dict[str, VerifyAdapter] = {}


def register_adapter(adapter: VerifyAdapter) -> None:
    """Use an adapter for the family named by its `family` attribute (replacing the family's own).

    Args:
        adapter: an instance of a `VerifyAdapter` subclass whose `family` names the family.
    """
    ADAPTERS[adapter.family] = adapter


def get_adapter(family: str) -> VerifyAdapter | None:
    """The verify adapter of `family`.

    Args:
        family: a family name (see `athelas_migrate.families.FAMILIES`).

    Returns:
        The registered adapter, else an instance of the class the family names in `verify_adapter`; None when
        the family is unknown or names none (it cannot be verified).
    """
    if family not in ADAPTERS:
        from ..families import FAMILIES

        fam = FAMILIES.get(family)
        if fam is None or not fam.verify_adapter:
            return None
        ADAPTERS[family] = load_class(fam.verify_adapter)()
    return ADAPTERS[family]


def known_families() -> list[str]:
    """The families `verify` can compare.

    Returns:
        The names of the families that have a verify adapter, sorted.
    """
    from ..families import FAMILIES

    return sorted(set(ADAPTERS) | {name for name, fam in FAMILIES.items() if fam.verify_adapter})
