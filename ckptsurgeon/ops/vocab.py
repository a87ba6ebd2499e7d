"""``resize-vocab``: every vocabulary-sized tensor grown or shrunk, as ``resize_token_embeddings``
does, but offline and streaming.

Resized: the word embeddings, an untied output head and the head's bias (BERT
``cls.predictions.bias``, RoBERTa ``lm_head.bias``); a tied head follows its embeddings (stored
once, it needs nothing; stored separately, it gets the same rows). Shrinking keeps the first N
rows. New rows: ``mean`` (default) is the mean of the existing rows, what transformers' resize
does without its covariance sampling; ``normal`` is N(0, std) drawn from the stream of (seed,
tensor name), as ``reinit`` draws; new bias entries are 0. config.json's ``vocab_size`` follows.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..errors import SelectionError
from ..formats.config_json import is_int
from ..formats.tokenizer_files import tokenizer_length
from ..plan import Copy, Plan, PlannedTensor, Rows
from ..plan.selection import config_get, config_section
from ..rules.bert import Rule, std_from
from ..ties import name_ties
from .base import SEED, Operation, Option

EMBEDDING_ENDS = (
    "word_embeddings.weight",
    "embed_tokens.weight",
    "wte.weight",
    "shared.weight",
    "tok_embeddings.weight",  # ModernBERT
    "token_embedding.weight",  # CLIP's text tower
)
# Heads and head biases named by their whole name (a suffix would match other models' tensors)
_HEAD_NAMES = ("decoder.weight",)  # ModernBERT's head, when stored (untied)
_BIAS_NAMES = ("decoder.bias",)  # ModernBERT's head bias
HEAD_ENDS = (
    "lm_head.weight",
    "predictions.decoder.weight",
    "lm_head.decoder.weight",
    "vocab_projector.weight",
    "generator_lm_head.weight",
)
_BIAS_ENDS = (
    "predictions.bias",
    "predictions.decoder.bias",
    "lm_head.bias",
    "lm_head.decoder.bias",
    "vocab_projector.bias",
    "generator_lm_head.bias",
)


def vocab_key(plan: Plan, embeddings: list[PlannedTensor]) -> str | None:
    """The (possibly dotted) config.json key of the vocabulary size: ``vocab_size``, or the
    sub-config's of the tower that holds the embeddings (CLIP: ``text_config.vocab_size``)."""
    for base in ("", *(config_section(plan.config, t.name) for t in embeddings)):
        if is_int(config_get(plan.config, base + "vocab_size")):
            return base + "vocab_size"
    return None


def vocab_tensors(plan: Plan) -> tuple[int, list[PlannedTensor], str | None]:
    """The current vocabulary size, the tensors that have one row per token, and the config
    key that holds the size."""
    embeddings = [t for t in plan.tensors if t.name.endswith(EMBEDDING_ENDS) and len(t.shape) == 2]
    key = vocab_key(plan, embeddings)
    if key is not None:
        size = int(config_get(plan.config, key))
    elif embeddings:
        size = embeddings[0].shape[0]
    else:
        raise SelectionError(
            "no word embeddings found (looked for '*word_embeddings.weight', "
            "'*embed_tokens.weight', '*wte.weight', 'shared.weight', '*tok_embeddings.weight', "
            "'*token_embedding.weight')",
            plan.source,
            "this operation needs the model's embedding matrix",
        )
    found = [
        t
        for t in plan.tensors
        if t.shape
        and t.shape[0] == size
        and (
            (
                len(t.shape) == 2
                and (t.name.endswith(EMBEDDING_ENDS + HEAD_ENDS) or t.name in _HEAD_NAMES)
            )
            or (len(t.shape) == 1 and (t.name.endswith(_BIAS_ENDS) or t.name in _BIAS_NAMES))
        )
    ]
    if not any(t.name.endswith(EMBEDDING_ENDS) for t in found):
        raise SelectionError(
            f"no word embeddings with vocab_size {size} rows",
            plan.source,
            "check that config.json's vocab_size belongs to these weights",
        )
    return size, found, key


def side_folder(plan: Plan) -> Path:
    """Where SRC's config.json and tokenizer files are: the folder the plan records (SRC's own,
    or --config-from's), else beside the weights (a plan built by hand records none)."""
    if plan.side_dir:
        return Path(plan.side_dir)
    src = Path(plan.source)
    return src if src.is_dir() else src.parent


def grown_rows(
    plan: Plan,
    tensors: list[PlannedTensor],
    size: int,
    keep: int,
    step: str,
    init: str,
    seed: int,
    pieces: tuple[tuple[int, ...], ...] = (),
) -> tuple[PlannedTensor, ...]:
    """The plan's tensors with each vocabulary-sized one of ``tensors`` resized to ``size``
    rows: its first ``keep`` rows, then new ones filled by ``init`` (``mean``, ``normal``
    drawn from the stream of its tied embeddings or its own, or ``pieces``); a bias's new
    entries are 0 unless filled from pieces. Shared by resize-vocab and add-tokens (``step``
    names it in the error for a tensor a step before already changed)."""
    for t in tensors:
        if t.computed:
            raise SelectionError(
                f"{t.name} is already re-initialised or cast at this point of the recipe",
                t.name,
                f"put the {step} step before reinit and cast steps",
            )
    ties = name_ties(plan.names, plan.config)
    std = std_from(plan.config, None)
    chosen = {t.name for t in tensors}
    keep = min(keep, size)
    out = []
    for t in plan.tensors:
        if t.name not in chosen:
            out.append(t)
            continue
        assert isinstance(t.source, Copy)
        fill = "zeros" if len(t.shape) == 1 and init != "pieces" else init
        rule = Rule("normal", std) if fill == "normal" else None
        stream = ties.get(t.name, t.name)  # a tied head draws its embeddings' values
        rows = Rows(t.source.tensor, keep, size - keep, fill, rule, stream, seed,
                    pieces if fill == "pieces" else ())  # fmt: skip
        out.append(replace(t, shape=(size, *t.shape[1:]), source=rows))
    return tuple(out)


def plan_resize_vocab(plan: Plan, size: int, init: str, seed: int) -> Plan:
    old, tensors, key = vocab_tensors(plan)
    if size == old:
        raise SelectionError(
            f"the vocabulary already has {size} entries", plan.source, "give another --size"
        )
    section = key.rsplit(".", 1)[0] if key is not None and "." in key else ""
    ids = config_get(plan.config, section) if section else plan.config
    token_ids = sorted((ids or {}).items(), key=lambda kv: (kv[0] != "pad_token_id", kv[0]))
    for name, value in token_ids:  # pad_token_id first, then bos, cls, eos, sep...
        if name.endswith("_token_id") and is_int(value) and size <= value < old:
            raise SelectionError(
                f"{name} {value} does not fit a vocabulary of {size}",
                plan.source,
                f"give --size > {value}, or change {name} in config.json first",
            )
    out = grown_rows(plan, tensors, size, old, "resize-vocab", init, seed)
    resized = replace(plan, tensors=out)
    length = tokenizer_length(side_folder(plan))
    if length is not None and (size < length or (old == length and size != length)):
        resized = resized.warn(
            f"the tokenizer beside the weights has {length} tokens and the embeddings will "
            f"have {size} rows: the ids no longer match; add-tokens grows both together"
        )
    if plan.config is None:
        return resized
    return resized.with_config({key or "vocab_size": size})


RESIZE_VOCAB = Operation(
    "resize-vocab",
    "Grow or shrink the vocabulary: embeddings, head and head bias; config.json follows.",
    (
        Option(
            "size",
            ("--size",),
            "int",
            "The new vocabulary size.",
            metavar="N",
            minimum=1,
            required=True,
        ),
        Option(
            "init",
            ("--init",),
            "choice",
            "New rows: the mean of the existing rows, or N(0, initializer_range).",
            "mean",
            choices=("mean", "normal"),
        ),
        SEED,
    ),
    plan_resize_vocab,
    details=(
        "Resizes the word embeddings, an untied output head and the head bias; a tied head "
        "follows its embeddings. Shrinking keeps the first N rows; new rows are the mean of the "
        "existing rows (--init mean) or N(0, initializer_range) (--init normal, seeded like "
        "reinit); new bias entries are 0. A pad_token_id (or another *_token_id) that no longer "
        "fits is an error."
    ),
    action="resize",
)
