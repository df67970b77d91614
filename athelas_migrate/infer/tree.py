"""One model's tensors seen by module, for the matching passes (match.py): which keys each module holds
directly and in its subtree, a subtree's signature, and the order the modules first ran in.
"""

from __future__ import annotations

from torch import nn

from .probe import Record


class Tree:
    """One model's tensors by module: subtree keys, direct keys, signatures, forward ranks."""

    def __init__(self, model: nn.Module, rec: Record):
        self.model = model
        self.sd = model.state_dict()
        self.rec = rec
        self.modules = dict(model.named_modules())
        self.subtree: dict[str, list[str]] = {n: [] for n in self.modules}
        self.direct: dict[str, list[str]] = {n: [] for n in self.modules}
        for key in self.sd:
            parent = key.rpartition(".")[0]
            self.direct.setdefault(parent, []).append(key)
            parts = key.split(".")
            for cut in range(len(parts)):
                prefix = ".".join(parts[:cut])
                if prefix in self.subtree:
                    self.subtree[prefix].append(key)
        self.order = {n: i for i, n in enumerate(rec.order)}

    def rel(self, module: str, key: str) -> str:
        """A state key relative to a module.

        Args:
            module: the module name ("" for the root).
            key: a state key inside it.

        Returns:
            The key without the module prefix.
        """
        return key[len(module) + 1:] if module else key

    def sig(self, module: str) -> tuple:
        """What two subtrees must share to be candidates: relative keys, shapes and dtypes.

        Args:
            module: the module name.

        Returns:
            A hashable, order-independent signature.
        """
        return tuple(sorted((self.rel(module, k), tuple(self.sd[k].shape), self.sd[k].dtype)
                            for k in self.subtree[module]))

    def called(self, module: str) -> bool:
        """Whether the module ran on the probe inputs.

        Args:
            module: the module name.

        Returns:
            True when its forward was recorded.
        """
        return self.rec.called(module)

    def holds_children(self, module: str) -> bool:
        """Whether some of the module's tensors lie in its submodules.

        Args:
            module: the module name.

        Returns:
            True when its subtree holds more keys than it holds directly.
        """
        return len(self.subtree[module]) > len(self.direct.get(module, []))

    def rank(self, module: str, group: list[str]) -> int:
        """Position of `module` among `group`, in first-run order (declaration order for modules not run).

        Args:
            module: a member of `group`.
            group: module names of the same kind.

        Returns:
            The 0-based rank.
        """
        ran = sorted((m for m in group if m in self.order), key=self.order.__getitem__)
        if module in self.order:
            return ran.index(module)
        rest = [m for m in group if m not in self.order]
        return len(ran) + rest.index(module)
