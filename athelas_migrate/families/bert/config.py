"""The BERT text encoder's architecture: read off the weights, completed from the user's config or a table of
standard models. Nothing is downloaded; an architecture the weights do not pin down is refused with what to pass.

To recognise another standard BERT, add its architecture facts to `STANDARD_BERTS` (they are used only when the
weights agree with every fact).
"""

from __future__ import annotations

import re
from typing import Any

from ...errors import InputError, MissingInformationError, UsageError
from ..base import Needs

# Standard checkpoints: architecture facts, used only when the shapes agree with them.
STANDARD_BERTS: dict[str, dict[str, Any]] = {
    "bert-base-uncased": dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                              intermediate_size=3072),
    "bert-base-cased": dict(vocab_size=28996, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                            intermediate_size=3072),
    "bert-large-uncased": dict(vocab_size=30522, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                               intermediate_size=4096),
    "bert-large-cased": dict(vocab_size=28996, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                             intermediate_size=4096),
    "bert-base-multilingual-cased": dict(vocab_size=119547, hidden_size=768, num_hidden_layers=12,
                                         num_attention_heads=12, intermediate_size=3072),
    "bert-base-multilingual-uncased": dict(vocab_size=105879, hidden_size=768, num_hidden_layers=12,
                                           num_attention_heads=12, intermediate_size=3072),
    "bert-base-chinese": dict(vocab_size=21128, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                              intermediate_size=3072),
    "prajjwal1/bert-tiny": dict(vocab_size=30522, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=512),
    "prajjwal1/bert-mini": dict(vocab_size=30522, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                intermediate_size=1024),
    "prajjwal1/bert-small": dict(vocab_size=30522, hidden_size=512, num_hidden_layers=4, num_attention_heads=8,
                                 intermediate_size=2048),
    "prajjwal1/bert-medium": dict(vocab_size=30522, hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                                  intermediate_size=2048),
}
_LAYER = re.compile(r"encoder\.layer\.(\d+)\.")



def bert_shapes(sd: dict, prefix: str, where: str) -> dict[str, int]:
    """BERT architecture facts readable from the weights (everything but the head count).

    Args:
        sd: the state dict.
        prefix: the BERT's key prefix (e.g. "text_subnetwork.bert.").
        where: names the file in messages.

    Returns:
        vocab_size, hidden_size, num_hidden_layers, intermediate_size, max_position_embeddings, type_vocab_size.

    Raises:
        InputError: a tensor is missing or the layer indices are not 0..n-1.
    """
    def shape(key: str) -> tuple[int, ...]:
        t = sd.get(prefix + key)
        if t is None:
            raise InputError(f"{where}: missing {prefix}{key}")
        return tuple(t.shape)

    vocab, hidden = shape("embeddings.word_embeddings.weight")
    layers = {int(m.group(1)) for k in sd if k.startswith(prefix) and (m := _LAYER.match(k[len(prefix):]))}
    if not layers or sorted(layers) != list(range(len(layers))):
        raise InputError(f"{where}: {prefix}encoder.layer.* indices are not 0..n-1")
    return {"vocab_size": vocab, "hidden_size": hidden, "num_hidden_layers": len(layers),
            "intermediate_size": shape("encoder.layer.0.intermediate.dense.weight")[0],
            "max_position_embeddings": shape("embeddings.position_embeddings.weight")[0],
            "type_vocab_size": shape("embeddings.token_type_embeddings.weight")[0]}


def resolve_bert_config(facts: dict[str, int], given: dict | None, tokenizer: str | None, where: str,
                        notes: list[str], needs: Needs | None = None) -> dict[str, Any]:
    """The full BERT config: the user's (checked against the shapes), else a standard name's, else refuse.

    Args:
        facts: what `bert_shapes` read off the weights.
        given: the user's BERT config (`--bert-config`, `bert_config`), or None.
        tokenizer: the tokenizer name, which may be a standard BERT's.
        where: names the file in messages.
        notes: the migration's notes (which source the config came from).
        needs: where to record a missing head count (the caller refuses once, naming everything); without it,
            a missing head count is refused here.

    Returns:
        The config (only the shape facts and the user's values when the head count is recorded as needed).

    Raises:
        UsageError: the user's config disagrees with the weights, or its head count does not divide the width.
        MissingInformationError: the head count is unknown and `needs` is None.
    """
    if given:
        wrong = [f"{k}={given[k]} (weights say {v})" for k, v in facts.items() if k in given and given[k] != v]
        if wrong:
            raise UsageError(f"{where}: the supplied BERT config disagrees with the weights: {', '.join(wrong)}")
        if "num_attention_heads" not in given:
            if needs is not None:
                needs.add("bert_config.num_attention_heads", "the supplied BERT config lacks it", 12)
                return {**given, **facts}
            raise MissingInformationError(f"{where}: the supplied BERT config lacks num_attention_heads")
        if facts["hidden_size"] % int(given["num_attention_heads"]):
            raise UsageError(f"{where}: num_attention_heads={given['num_attention_heads']} does not divide "
                             f"hidden_size={facts['hidden_size']}")
        return {**given, **facts}
    std = STANDARD_BERTS.get(tokenizer or "")
    if std and all(std[k] == facts[k] for k in std if k in facts):
        notes.append(f"{where}: BERT architecture of {tokenizer!r} (agrees with the weights): "
                     f"{std['num_attention_heads']} attention heads")
        return {**facts, "num_attention_heads": std["num_attention_heads"], "hidden_act": "gelu",
                "layer_norm_eps": 1e-12, "model_type": "bert"}
    why = (f"the tokenizer name {tokenizer!r} is a standard model whose configuration disagrees with the "
           "weights" if std else f"{tokenizer!r} is not a standard BERT name this tool knows")
    found = ", ".join(f"{k}={v}" for k, v in facts.items())
    if needs is not None:
        needs.add("bert_config.num_attention_heads", f"the BERT's number of attention heads cannot be read from the "
                  f"weights ({found}) and {why}; give it (or the whole transformers config.json with --bert-config)",
                  12)
        return dict(facts)
    raise MissingInformationError(
        f"{where}: the BERT's number of attention heads cannot be read from the weights ({found}) and {why}; "
        "pass its transformers config.json with --bert-config FILE (or --set 'bert_config={...}')")
