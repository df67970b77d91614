"""Candidate matching: which old tensors produce which new tensors, and with which op.

Shape and name similarity are hints; the models are the evidence. Passes, each on what the previous
ones left:

1. **subtrees**: an old and a new module whose subtrees hold the same relative keys, shapes and dtypes.
   Pairs that both ran are accepted only when the new module, loaded with the old module's tensors and
   fed the old module's recorded arguments, returns the old module's recorded output (a local test).
   Among same-shaped candidates the one that ran at the same rank (k-th of its kind in forward order)
   comes first, then the more similar name; larger subtrees first (one rule per moved subtree).
2. **modules**: the direct tensors of two modules that hold the same numbers of elements under other
   names or layouts (`gamma`/`beta` vs `weight`/`bias`, `x @ W` vs `nn.Linear`, flattened vs shaped):
   every bijection with `rename`/`transpose`/`reshape`/`cast` is tried, hinted names first, and proven
   by the local test where both modules run.
3. **fused**: one old tensor whose first dimension is the sum of several new ones (`split`), or the
   reverse (`concat`); parts ordered by the order their modules run.
4. **tensors**: what is left, tensor by tensor, by shape and name.

Same-shaped choices are recorded as ambiguity groups; the proof (proof.py) permutes within a group
when the first choice does not reproduce the outputs.

To add an inference strategy, add a pass method to `Matcher` that looks only at tensors not yet `placed`
(old) or `filled` (new), records each accepted pairing with `self._accept(Unit(kind, ...))` (its entries
use the rule ops collapse.py writes: rename, transpose, reshape, cast, split, concat), proves it with
`self._test` where both modules ran, and gives same-shaped alternatives one `group`; then call it from `run`
at its place in the order (more specific passes first: a later pass only sees what earlier ones left).
"""

from __future__ import annotations

import difflib
import itertools
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .probe import Record, local_test
from .tree import Tree

# hinted local-name pairs (old, new); data, not code paths
ALIASES = {("gamma", "weight"), ("beta", "bias"), ("W", "weight"), ("b", "bias"), ("w", "weight"),
           ("scale", "weight"), ("shift", "bias"), ("kernel", "weight"), ("g", "weight")}
MAX_BIJECTIONS = 64


@dataclass
class Entry:
    """One op of the mapping: `sources` (old keys) produce `targets` (new keys)."""

    op: str
    sources: list[str]
    targets: list[str]
    params: dict = field(default_factory=dict)
    unit: int = -1


@dataclass
class Unit:
    """An accepted pairing and its evidence; entries hold relative names under `old`/`new`."""

    kind: str  # subtree | module | split | concat | tensor
    old: str
    new: str
    local: list[tuple[str, list[str], list[str], dict]]
    evidence: str
    group: tuple | None = None  # units sharing a group may swap their old side (proof search)

    def entries(self, index: int) -> list[Entry]:
        """The unit's ops with full keys.

        Args:
            index: the unit's position, recorded on each entry (the evidence refers to it).

        Returns:
            One Entry per local op.
        """
        out = []
        for op, srcs, tgts, params in self.local:
            out.append(Entry(op, [_join(self.old, s) for s in srcs], [_join(self.new, t) for t in tgts],
                             dict(params), index))
        return out


def _join(prefix: str, rel: str) -> str:
    return f"{prefix}.{rel}" if prefix and rel else (prefix or rel)


def _similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b).ratio()


class Matcher:
    """Pairs the tensors of an old and a new model, pass by pass, each pass on what the previous ones left."""

    def __init__(self, old: nn.Module, new: nn.Module, rec_old: Record, rec_new: Record, atol: float):
        self.o = Tree(old, rec_old)
        self.n = Tree(new, rec_new)
        self.atol = atol
        self.placed: set[str] = set()
        self.filled: set[str] = set()
        self.units: list[Unit] = []
        self.considered: dict[str, list[str]] = {}  # new module or key -> candidate notes
        self.tests = 0

    # ------------------------------------------------------------------ helpers
    def _free(self, keys: list[str], taken: set[str]) -> bool:
        return bool(keys) and not any(k in taken for k in keys)

    def _note(self, new: str, text: str) -> None:
        notes = self.considered.setdefault(new or "<root>", [])
        if text not in notes and len(notes) < 6:
            notes.append(text)

    def _accept(self, unit: Unit) -> None:
        self.units.append(unit)
        for e in unit.entries(len(self.units) - 1):
            self.placed.update(e.sources)
            self.filled.update(e.targets)

    def _tier(self, n_mod: str, o_mod: str) -> int:
        a, b = self.n.called(n_mod), self.o.called(o_mod)
        return 0 if a and b else (1 if not a and not b else 2)

    def _test(self, n_mod: str, state: dict[str, torch.Tensor], o_mod: str) -> tuple[bool, float]:
        self.tests += 1
        return local_test(self.n.modules[n_mod], state, self.o.rec.calls[o_mod], self.atol)

    # ------------------------------------------------------------------ pass 1: subtrees
    def subtrees(self) -> None:
        """Pass 1: pair whole subtrees with the same relative keys, shapes and dtypes (see the module docstring)."""
        by_sig_new: dict[tuple, list[str]] = {}
        by_sig_old: dict[tuple, list[str]] = {}
        for m, keys in self.n.subtree.items():
            if keys:
                by_sig_new.setdefault(self.n.sig(m), []).append(m)
        for m, keys in self.o.subtree.items():
            if keys:
                by_sig_old.setdefault(self.o.sig(m), []).append(m)
        pairs = []
        for sig, news in by_sig_new.items():
            olds = by_sig_old.get(sig, [])
            for nm in news:
                for om in olds:
                    tier = self._tier(nm, om)  # forward rank only between modules that both ran
                    dist = abs(self.n.rank(nm, news) - self.o.rank(om, olds)) if tier == 0 else 0
                    pairs.append((-len(sig), tier, dist, -_similarity(om, nm), nm, om, sig))
        pairs.sort(key=lambda p: p[:4])
        for _size, tier, _dist, _sim, nm, om, sig in pairs:
            if not (self._free(self.n.subtree[nm], self.filled)
                    and self._free(self.o.subtree[om], self.placed)):
                continue
            container = self.n.holds_children(nm) or self.o.holds_children(om)
            if tier == 2 or (tier == 1 and container):
                continue  # a container that never runs proves nothing: its children are matched one by one
            rels = [r for r, _, _ in sig]
            if tier == 0:
                state = {r: self.o.sd[_join(om, r)] for r in rels}
                ok, diff = self._test(nm, state, om)
                if not ok:
                    self._note(nm, f"{om or '<root>'}: same keys and shapes, but outputs differ on its inputs "
                               f"(max |diff| {diff:.3g})")
                    continue
                how = f"same keys and shapes; fed {om or '<root>'}'s recorded inputs it returns the same outputs " \
                      f"(max |diff| {diff:.3g})"
            else:
                how = "same keys and shapes; neither module runs in forward (matched by name)"
            n_group = [m for m in by_sig_new[sig]]
            o_group = by_sig_old[sig]
            if len(n_group) > 1 and len(o_group) > 1:
                how += (f"; one of {len(n_group)} same-shaped modules, chosen by forward order "
                        f"(rank {self.n.rank(nm, n_group)} of {len(n_group)}) then name")
            unit = Unit("subtree", om, nm, [("rename", [r], [r], {}) for r in rels], how,
                        ("subtree", sig) if len(n_group) > 1 and len(o_group) > 1 else None)
            self._accept(unit)

    # ------------------------------------------------------------------ pass 2: modules
    def _options(self, o_key: str, n_key: str) -> list[tuple[str, dict, int]]:
        """Ops turning old tensor `o_key` into new tensor `n_key`: (op, params, preference)."""
        a, b = self.o.sd[o_key], self.n.sd[n_key]
        out = []
        if a.dtype != b.dtype:
            if tuple(a.shape) == tuple(b.shape) and a.is_floating_point() == b.is_floating_point():
                out.append(("cast", {"dtype": str(b.dtype).removeprefix("torch."),
                                     "from_dtype": str(a.dtype).removeprefix("torch.")}, 3))
            return out
        if tuple(a.shape) == tuple(b.shape):
            out.append(("rename", {}, 0))
        if a.dim() == 2 and b.dim() == 2 and tuple(a.shape) == tuple(reversed(b.shape)):
            out.append(("transpose", {"dims": [0, 1]}, 1))
        if a.numel() == b.numel() and tuple(a.shape) != tuple(b.shape):
            out.append(("reshape", {"shape": list(b.shape), "from_shape": list(a.shape)}, 2))
        return out

    def _hint(self, o_key: str, n_key: str) -> int:
        a, b = o_key.rpartition(".")[2], n_key.rpartition(".")[2]
        return 0 if a == b else (1 if (a, b) in ALIASES else 2)

    def _bijections(self, o_keys: list[str], n_keys: list[str]) -> list[list[tuple[str, str, str, dict]]]:
        choices = []
        for nk in n_keys:
            opts = [(ok, op, params, (self._hint(ok, nk), pref)) for ok in o_keys
                    for op, params, pref in self._options(ok, nk)]
            if not opts:
                return []
            opts.sort(key=lambda t: t[3])
            choices.append([(ok, nk, op, params, score) for ok, op, params, score in opts])
        found = []
        for combo in itertools.islice(itertools.product(*choices), 4096):
            if len({c[0] for c in combo}) != len(combo):
                continue
            found.append(combo)
        found.sort(key=lambda c: sum(s[4][0] * 10 + s[4][1] for s in c))
        return [[(o, n, op, p) for o, n, op, p, _ in c] for c in found[:MAX_BIJECTIONS]]

    def modules(self) -> None:
        """Pass 2: pair the direct tensors of two modules under other names or layouts, by bijections."""
        news = [m for m, keys in self.n.direct.items() if keys and self._free(keys, self.filled)]
        olds = [m for m, keys in self.o.direct.items() if keys and self._free(keys, self.placed)]

        def numels(tree: Tree, m: str) -> tuple:
            return tuple(sorted(tree.sd[k].numel() for k in tree.direct[m]))

        groups_new: dict[tuple, list[str]] = {}
        groups_old: dict[tuple, list[str]] = {}
        for m in news:
            groups_new.setdefault(numels(self.n, m), []).append(m)
        for m in olds:
            groups_old.setdefault(numels(self.o, m), []).append(m)
        pairs = []
        for sig, ns in groups_new.items():
            os_ = groups_old.get(sig, [])
            for nm in ns:
                for om in os_:
                    tier = self._tier(nm, om)
                    testable = tier == 0 and not self.n.holds_children(nm) and not self.o.holds_children(om)
                    dist = abs(self.n.rank(nm, ns) - self.o.rank(om, os_)) if testable else 0
                    pairs.append((tier, dist, -_similarity(om, nm), nm, om, sig))
        pairs.sort(key=lambda p: p[:3])
        for tier, _dist, _sim, nm, om, sig in pairs:
            n_keys, o_keys = self.n.direct[nm], self.o.direct[om]
            if not (self._free(n_keys, self.filled) and self._free(o_keys, self.placed)):
                continue
            testable = tier == 0 and not self.n.holds_children(nm) and not self.o.holds_children(om)
            chosen, how = None, ""
            for bij in self._bijections(o_keys, n_keys):
                if not testable:
                    chosen = bij
                    how = "tensors of the same sizes; not testable in isolation (matched by name and shape)"
                    break
                state = {}
                for ok, nk, op, params in bij:
                    state[self.n.rel(nm, nk)] = _apply_op(op, params, self.o.sd[ok])
                good, diff = self._test(nm, state, om)
                if good:
                    chosen = bij
                    how = (f"fed {om or '<root>'}'s recorded inputs, {nm or '<root>'} holding its tensors "
                           f"({', '.join(_describe(o, n, op) for o, n, op, _ in bij)}) returns the same outputs "
                           f"(max |diff| {diff:.3g})")
                    break
                self._note(nm, f"{om or '<root>'} as ({', '.join(_describe(o, n, op) for o, n, op, _ in bij)}): "
                           f"outputs differ on its inputs (max |diff| {diff:.3g})")
            if chosen is None:
                continue
            local = [(op, [self.o.rel(om, ok)], [self.n.rel(nm, nk)], params) for ok, nk, op, params in chosen]
            ambiguous = len(groups_new[sig]) > 1 and len(groups_old.get(sig, [])) > 1 and testable
            self._accept(Unit("module", om, nm, local, how, ("module", sig) if ambiguous else None))

    # ------------------------------------------------------------------ pass 3: fused
    def fused(self) -> None:
        """Pass 3: one old tensor split into several new ones, or several concatenated into one."""
        for split in (True, False):
            src_tree, dst_tree = (self.o, self.n) if split else (self.n, self.o)
            src_taken, dst_taken = (self.placed, self.filled) if split else (self.filled, self.placed)
            for key in list(src_tree.sd):
                if key in src_taken:
                    continue
                big = src_tree.sd[key]
                if big.dim() == 0:
                    continue
                rest, attr = tuple(big.shape[1:]), key.rpartition(".")[2]
                parts = [k for k in dst_tree.sd if k not in dst_taken and dst_tree.sd[k].dim() == big.dim()
                         and tuple(dst_tree.sd[k].shape[1:]) == rest and dst_tree.sd[k].dtype == big.dtype
                         and dst_tree.sd[k].shape[0] < big.shape[0]]
                named = [k for k in parts if _attr_compatible(attr, k.rpartition(".")[2])]
                parts = named or parts
                chosen = _subset_sum(parts, [dst_tree.sd[k].shape[0] for k in parts], big.shape[0])
                if not chosen:
                    continue
                chosen.sort(key=lambda k: (dst_tree.order.get(k.rpartition(".")[0], math.inf), k))
                sizes = [int(dst_tree.sd[k].shape[0]) for k in chosen]
                evidence = (f"{key} {list(big.shape)} is the concatenation along dim 0 of "
                            f"{len(chosen)} tensors of sizes {sizes}; parts ordered by the order their modules run")
                if split:
                    local = [("split", [key], chosen, {"dim": 0, "sizes": sizes})]
                    unit = Unit("split", "", "", local, evidence, ("split", key))
                else:
                    local = [("concat", chosen, [key], {"dim": 0, "sizes": sizes})]
                    unit = Unit("concat", "", "", local, evidence, ("concat", key))
                self._accept(unit)

    # ------------------------------------------------------------------ pass 4: tensors
    def tensors(self) -> None:
        """Pass 4: what is left, tensor by tensor, by shape and name."""
        left_old = [k for k in self.o.sd if k not in self.placed]
        for nk in [k for k in self.n.sd if k not in self.filled]:
            best = None
            for ok in left_old:
                if ok in self.placed:
                    continue
                for op, params, pref in self._options(ok, nk):
                    score = (self._hint(ok, nk), pref, -_similarity(ok, nk))
                    if best is None or score < best[0]:
                        best = (score, ok, op, params)
            if best is None:
                continue
            _, ok, op, params = best
            same = [k for k in left_old if k not in self.placed and k != ok and self._options(k, nk)]
            how = f"by shape and name only ({len(same)} other candidate(s): {', '.join(same[:3])})" if same else \
                "the only remaining tensor it can come from (by shape)"
            self._accept(Unit("tensor", "", "", [(op, [ok], [nk], params)], how,
                              ("tensor", tuple(self.n.sd[nk].shape)) if same else None))

    # ------------------------------------------------------------------ result
    def run(self) -> None:
        """Run every pass in order; the result is in `units`."""
        self.subtrees()
        self.modules()
        self.fused()
        self.tensors()

    def entries(self) -> list[Entry]:
        """The accepted mapping as rule entries.

        Returns:
            Every unit's entries with full keys, in acceptance order.
        """
        return [e for i, u in enumerate(self.units) for e in u.entries(i)]

    def candidates_for(self, key: str, tree: Tree, other: Tree, taken: set[str]) -> list[str]:
        """Best untaken tensors of the other model with the same number of elements (for refusals).

        Args:
            key: the unmatched key.
            tree: the model `key` belongs to.
            other: the other model.
            taken: keys of `other` already matched.

        Returns:
            Up to three keys, most similar name first.
        """
        t = tree.sd[key]
        cands = [k for k in other.sd if k not in taken and other.sd[k].numel() == t.numel()]
        cands.sort(key=lambda k: -_similarity(k, key))
        return cands[:3]


def _attr_compatible(big: str, small: str) -> bool:
    return small in big or big in small


def _subset_sum(keys: list[str], sizes: list[int], total: int) -> list[str] | None:
    """The first subset (2..4 parts, siblings first) whose sizes add up to `total`."""
    lookup = dict(zip(keys, sizes))
    keys = sorted(keys)
    for n in (3, 2, 4):
        for combo in itertools.islice(itertools.combinations(keys, n), 20000):
            if sum(lookup[k] for k in combo) == total:
                parents = {k.rpartition(".")[0].rpartition(".")[0] for k in combo}
                if len(parents) == 1:
                    return list(combo)
    return None


def _apply_op(op: str, params: dict, t: torch.Tensor) -> torch.Tensor:
    if op == "transpose":
        return t.transpose(*params["dims"]).contiguous()
    if op == "reshape":
        return t.reshape(params["shape"])
    if op == "cast":
        return t.to(getattr(torch, params["dtype"]))
    return t


def _describe(o: str, n: str, op: str) -> str:
    o, n = o.rpartition(".")[2], n.rpartition(".")[2]
    return f"{o}->{n}" + ("" if op == "rename" else f" ({op})")
