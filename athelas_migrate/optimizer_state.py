"""Remapping optimizer state when parameter names or order change.

torch numbers a saved optimizer's parameters consecutively, group by group, in
the order the optimizer was given them. We name each saved id through the
source family's grouping, follow the name through the rename map, and renumber
it in the target family's grouping, so `optimizer.load_state_dict` pairs every
momentum buffer with the parameter it belongs to.
"""

from __future__ import annotations

import copy
from typing import Any

from .errors import ValidationError


def remap_optimizer_states(states: list[Any], src_groups: list[list[str]], dst_groups: list[list[str]],
                           rename: dict[str, str]) -> list[Any]:
    """Renumber every saved optimizer state from the source grouping to the target's.

    Args:
        states: the checkpoint's `optimizer_states` (entries that are not torch optimizer states pass through).
        src_groups: the source family's parameter names per optimizer group, in the order it gave them.
        dst_groups: the target family's, likewise.
        rename: source parameter name -> target name.

    Returns:
        New state dicts (the input is not modified): state keyed by target ids, groups listing target ids.

    Raises:
        ValidationError: the saved groups do not match the source grouping, or a parameter's state has no
            place in the target.
    """
    out = []
    for n, st in enumerate(states):
        if not (isinstance(st, dict) and isinstance(st.get("param_groups"), list)):
            out.append(st)
            continue
        saved = st["param_groups"]
        if len(saved) != len(src_groups) or any(len(g.get("params", [])) != len(s) for g, s in zip(saved, src_groups)):
            sizes = [len(g.get("params", [])) for g in saved]
            raise ValidationError(f"optimizer state {n}: its parameter groups {sizes} do not match the model's "
                                  f"parameters {[len(g) for g in src_groups]}; refusing to guess the pairing")
        id_to_name = {}
        for group, names in zip(saved, src_groups):
            for pid, name in zip(group["params"], names):
                id_to_name[pid] = name
        dst_index, next_id = {}, 0
        for names in dst_groups:
            for name in names:
                dst_index[name] = next_id
                next_id += 1
        new_state = {}
        for pid, value in (st.get("state") or {}).items():
            name = id_to_name.get(pid)
            target = rename.get(name) if name is not None else None
            if target not in dst_index:
                raise ValidationError(f"optimizer state {n}: state of parameter {name or pid} has no place in "
                                      "the target model")
            new_state[dst_index[target]] = value
        groups = []
        for group, names in zip(saved, dst_groups):
            g = copy.copy(group)
            g["params"] = [dst_index[nm] for nm in names]
            groups.append(g)
        remapped = dict(st)
        remapped["state"] = dict(sorted(new_state.items()))
        remapped["param_groups"] = groups
        out.append(remapped)
    return out
