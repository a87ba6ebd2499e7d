"""``add-tokens``: new vocabulary with its tokenizer, each new row from the pieces it replaces.

The tokenizer files in DEST are what ``tokenizer.add_tokens(tokens, special_tokens=...)``
followed by ``save_pretrained`` writes from SRC's tokenizer: transformers' own tokenizer code
does both (``AutoTokenizer``, local files only), so ids, encodings, ``added_tokens.json``,
``tokenizer_config.json`` and ``special_tokens_map.json`` are exactly its. The weights grow as
``resize-vocab`` grows them (embeddings, an untied head, the head bias; config.json's
``vocab_size``) to ``len(tokenizer)``, rounded up by ``pad_to_multiple_of``. New rows:
``pieces`` (default), the mean of the rows of the pieces SRC's tokenizer splits the token into
(fast vocabulary transfer; a head row and a bias entry likewise), padding rows the mean of all
rows; ``mean``, the mean of all rows; ``normal``, N(0, initializer_range) from the (seed, tensor
name) stream.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import SelectionError
from ..plan import Plan
from .base import SEED, Operation, Option
from .vocab import grown_rows, side_folder, vocab_tensors

TOKENIZER_FILES = (  # a vocabulary (tokenizer_config.json alone is none)
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)


def _tokens(tokens: list[str], tokens_file: str | None, where: str) -> list[str]:
    out = list(tokens)
    if tokens_file:
        try:
            text = Path(tokens_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise SelectionError(
                f"cannot read the tokens file ({exc.strerror})", tokens_file, "check the path"
            ) from None
        out += [line.rstrip("\r\n") for line in text.splitlines() if line.strip()]
    if not out:
        raise SelectionError("no tokens given", where, "give --token TEXT or --tokens-file FILE")
    for t in out:
        if not t.strip():
            raise SelectionError("an empty token", where, "every token needs a character")
    return out


def _tokenizer(folder: Path, where: str) -> Any:
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise SelectionError(
            "SRC has no tokenizer files (tokenizer.json, vocab.txt, ...)",
            where,
            "use resize-vocab to grow the matrices alone",
        )
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise SelectionError(
            "add-tokens needs transformers for the tokenizer, which is not installed",
            where,
            "pip install 'ckptsurgeon[verify]'",
        ) from None
    try:
        return AutoTokenizer.from_pretrained(str(folder))  # a local folder: never the Hub
    except Exception as exc:
        from ..errors import first_line

        raise SelectionError(
            f"transformers cannot load SRC's tokenizer ({first_line(exc)})",
            where,
            "check the tokenizer files",
        ) from None


def plan_add_tokens(
    plan: Plan,
    tokens: list[str],
    tokens_file: str | None,
    special: bool,
    init: str,
    pad_to_multiple_of: int | None,
    seed: int,
) -> Plan:
    where = plan.source
    wanted = _tokens(tokens, tokens_file, where)
    tok = _tokenizer(side_folder(plan), where)
    old_len = len(tok)
    rows, tensors, key = vocab_tensors(plan)
    rows = tensors[0].shape[0] if tensors else rows
    if old_len > rows or 2 * old_len < rows:  # padded rows are fine (T5: 32100 of 32128)
        raise SelectionError(
            f"the tokenizer has {old_len} tokens but the embeddings have {rows} rows",
            where,
            "fix the checkpoint first (resize-vocab to the tokenizer's length)",
        )
    vocab = tok.get_vocab()
    warnings = [f"{t!r} is already in the vocabulary: skipped" for t in wanted if t in vocab]
    fresh = [t for t in dict.fromkeys(wanted) if t not in vocab]
    pieces = tuple(tuple(tok(t, add_special_tokens=False)["input_ids"]) for t in fresh)
    # as given: transformers registers the known ones too
    tok.add_tokens(wanted, special_tokens=special)
    size = len(tok)
    if pad_to_multiple_of:
        size = -(-size // pad_to_multiple_of) * pad_to_multiple_of
    if size < rows:  # T5's padding rows past the tokenizer: transformers drops them too
        warnings.append(
            f"the embeddings shrink from {rows} to {size} rows, len(tokenizer) as "
            "resize_token_embeddings gives: give --pad-to-multiple-of N to keep padding rows"
        )
    files = _saved(tok)
    out = grown_rows(plan, tensors, size, old_len, "add-tokens", init, seed, pieces)
    grown = replace(plan, tensors=out, files=(*plan.files, *files)).warn(*warnings)
    return grown if plan.config is None else grown.with_config({key or "vocab_size": size})


def _saved(tok: Any) -> tuple[tuple[str, bytes], ...]:
    """The tokenizer files ``save_pretrained`` writes, as (name, bytes), sorted."""
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        return tuple((p.name, p.read_bytes()) for p in sorted(Path(tmp).iterdir()) if p.is_file())


ADD_TOKENS = Operation(
    "add-tokens",
    "Add tokens to the tokenizer and grow the embeddings, head and bias to match.",
    (
        Option("tokens", ("--token",), "strings", "A token to add (repeatable).", metavar="TEXT"),
        Option(
            "tokens_file",
            ("--tokens-file",),
            "str",
            "A file of tokens, one per line.",
            metavar="FILE",
        ),
        Option("special", ("--special",), "bool", "Add them as special tokens.", False),
        Option(
            "init",
            ("--init",),
            "choice",
            "New rows: the mean of the token's pieces' rows, the mean of all rows, or "
            "N(0, initializer_range).",
            "pieces",
            choices=("pieces", "mean", "normal"),
        ),
        Option(
            "pad_to_multiple_of",
            ("--pad-to-multiple-of",),
            "int",
            "Round the new vocabulary size up to a multiple of N.",
            metavar="N",
            minimum=1,
        ),
        SEED,
    ),
    plan_add_tokens,
    details=(
        "The tokenizer files in DEST are what tokenizer.add_tokens + save_pretrained writes "
        "(transformers' own tokenizer code, local files only); tokens already in the vocabulary "
        "are skipped with a note. The weights grow to len(tokenizer) (rounded up by "
        "--pad-to-multiple-of): a new row is the mean of the rows of the pieces SRC's tokenizer "
        "splits the token into (--init pieces), the mean of all rows (mean) or N(0, "
        "initializer_range) (normal); config.json's vocab_size follows."
    ),
)
