"""Tied weights: which member of a tied group transformers keeps, and which names are tied."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Names transformers writes for the second member of a tied pair; the other member is canonical.
TIED_ALIAS_SUFFIXES = (
    "predictions.decoder.weight",
    "predictions.decoder.bias",
    "lm_head.decoder.weight",
    "lm_head.decoder.bias",
    "vocab_projector.weight",
    "generator_lm_head.weight",
)


_INPUT_EMBEDDING_ENDS = (
    "word_embeddings.weight",  # BERT family, BLOOM
    "embed_tokens.weight",  # Llama, OPT, BART
    "wte.weight",  # GPT-2, GPT-J, GPT-Neo
)


def _is_head_alias(name: str) -> bool:
    leaf = name.rsplit(".", 2)
    return name.endswith(TIED_ALIAS_SUFFIXES) or leaf[-2:] == ["lm_head", "weight"]


def canonical_of(names: list[str]) -> str:
    """Pick the member of a tied group that transformers keeps when it saves: the input
    embedding, never the output head.

    GPT-2 ``transformer.wte.weight`` (not ``lm_head.weight``), BLOOM
    ``transformer.word_embeddings.weight``, Llama/OPT ``*.embed_tokens.weight``, T5
    ``shared.weight`` (over ``encoder.embed_tokens.weight`` and ``decoder.embed_tokens.weight``),
    BERT ``*.embeddings.word_embeddings.weight``; a head bias over its decoder bias. Ties between
    other names: the shortest name, then alphabetical order.

    >>> canonical_of(["lm_head.weight", "transformer.wte.weight"])
    'transformer.wte.weight'
    >>> canonical_of(["encoder.embed_tokens.weight", "lm_head.weight", "shared.weight"])
    'shared.weight'
    """

    def rank(n: str) -> tuple[bool, bool, bool, bool, int, str]:
        return (
            _is_head_alias(n),
            n.rsplit(".", 2)[-2:] != ["shared", "weight"],
            not n.endswith(_INPUT_EMBEDDING_ENDS),
            "embed" not in n,
            len(n),
            n,
        )

    return min(names, key=rank)


def name_ties(names: Sequence[str], config: dict[str, Any] | None) -> dict[str, str]:
    """Tied pairs present as separate tensors (e.g. in safetensors): ``{alias: canonical}``.

    Follows transformers: head decoders are tied to the word embeddings (unless the config says
    ``tie_word_embeddings: false``) and decoder biases to the head bias.
    """
    present = set(names)
    ties: dict[str, str] = {}
    tie_embeddings = (config or {}).get("tie_word_embeddings", True) is not False
    word = [n for n in names if n.endswith("embeddings.word_embeddings.weight")]
    for name in names:
        if not name.endswith(TIED_ALIAS_SUFFIXES):
            continue
        if name.endswith(".decoder.bias"):
            target = name[: -len("decoder.bias")] + "bias"
            if target in present:
                ties[name] = target
        elif tie_embeddings and len(word) >= 1:
            # ELECTRA's generator head ties to the generator's embeddings when it has its own
            candidates = [w for w in word if w.split(".")[0] == name.split(".")[0]] or word
            ties[name] = candidates[0]
    return ties


def head_ties(names: Sequence[str], config: dict[str, Any] | None) -> dict[str, str]:
    """``lm_head.weight`` and the input embedding, when both are stored and the config does not
    say ``tie_word_embeddings: false`` (GPT-2, Llama-style tied heads): ``{alias: canonical}``.
    Whether they are really tied is for the caller to check (their bytes)."""
    if (config or {}).get("tie_word_embeddings", True) is False:
        return {}
    heads = [n for n in names if n.rsplit(".", 2)[-2:] == ["lm_head", "weight"]]
    inputs = [n for n in names if n.endswith(_INPUT_EMBEDDING_ENDS)]
    if len(heads) != 1 or len(inputs) != 1:
        return {}
    return {heads[0]: inputs[0]}
