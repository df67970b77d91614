"""Rule ops as objects: each op parses its TOML table, applies its rules and inverts them, in one class.

How to add a state op (say `scale`, multiplying a tensor by a constant):

1. Write a subclass of `MatchOp` (keys claimed by a `match` regex, see `keyed.py`) or of `StateOp` (ops that
   claim no key, like `create`), in the module of related ops or a new one here, and register it::

       @state_op
       class Scale(MatchOp):
           name = "scale"
           fields = frozenset({"id", "op", "match", "to", "factor"})

           @classmethod
           def parse_params(cls, r, where):       # validate the op's own fields
               return {"factor": require(r, "factor", where, float)}

           @classmethod
           def transform(cls, rule, key, tensor, ctx):
               return [TensorRef.from_torch(tensor.to_torch() * rule.params["factor"], tensor.is_parameter)]

           @classmethod
           def inverse_params(cls, rule):          # or set `one_way = "why"` when it cannot be undone
               return {"factor": 1 / rule.params["factor"]}

   An op that is not a `MatchOp` overrides `parse`, an apply hook (`apply_key`, `apply_group` or `add_keys`,
   see `StateOp` for their order) and `inverse`, or sets `one_way`.
2. Import the module below so the decorator runs.
3. Document the op in the `rules/schema.py` docstring table and README.md "Rule files".

Nothing else changes: the schema, the applier and rollback look ops up in `OPS` (state) and `HPARAM_OPS`
(hyper-parameters). `tests/test_rule_ops.py` checks that every registered op parses, applies and inverts (or
says why it is one-way). A hyper-parameter op is a subclass of `HparamOp` registered with `@hparam_op`
(see `hparams.py`).
"""

from . import create, drop, head, hparams, keyed, split_concat  # noqa: F401  (each module registers its ops)
from .base import HPARAM_OPS, OPS, ApplyContext, HparamOp, HparamRule, KeyEvent, StateOp, StateRule, hparam_op, state_op

__all__ = ["HPARAM_OPS", "OPS", "ApplyContext", "HparamOp", "HparamRule", "KeyEvent", "StateOp", "StateRule",
           "file_ops", "hparam_op", "state_op"]


def file_ops(registry: dict[str, type]) -> list[str]:
    """The op names a rule file may use, sorted (ops made only by inversion are left out).

    Args:
        registry: `OPS` or `HPARAM_OPS`.

    Returns:
        The sorted names.
    """
    return sorted(name for name, cls in registry.items() if cls.in_files)
