"""The public verbs: each builds a one-step recipe (two with ``strip_prefix``) and runs it
through the same path as :func:`apply` (:mod:`ckptsurgeon.runner`): open (headers only) -> plan
-> check DEST -> execute.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .errors import DestinationError
from .runner import PathLike, Result, RunOptions, _verb, apply, run, verb_recipe

if TYPE_CHECKING:  # typing.Unpack is Python 3.11's
    from typing_extensions import Unpack

__all__ = ["Result", "RunOptions", "apply", "run", "verb_recipe"]


def convert(
    src: PathLike,
    dest: PathLike | None = None,
    *,
    dtype: str | None = None,
    strip_prefix: str | Sequence[str] = (),
    **run_options: Unpack[RunOptions],
) -> Result:
    """Rewrite any readable checkpoint, training checkpoints included, as safetensors with every
    value unchanged, or cast to ``dtype`` (``"bf16"``, ``"fp16"``, ``"fp32"``) on the way.

    ``strip_prefix`` removes wrapper prefixes such as ``module.`` from the names;
    ``max_shard_size`` is bytes, a size such as ``"50KB"``, ``"source"`` or ``"auto"`` (the
    default: 5GB, never two source files in one); ``config_from`` a model folder or
    Hub id that supplies config.json and the tokenizer (a training checkpoint has none).

    >>> convert("bert-bin/", "bert-safetensors/")  # doctest: +SKIP
    >>> convert("ckpts/step-5000/", "release/", dtype="bf16",
    ...         config_from="bert-base-uncased")  # doctest: +SKIP
    """
    return _verb("convert", src, dest, {"dtype": dtype}, strip_prefix=strip_prefix, **run_options)


def average(
    srcs: Sequence[PathLike],
    dest: PathLike | None = None,
    *,
    weights: Sequence[float] | str | None = None,
    **run_options: Unpack[RunOptions],
) -> Result:
    """The (weighted) mean of checkpoints of one model: every floating tensor becomes
    ``sum(w_i * x_i) / sum(w_i)`` in float64, rounded once; side files come from ``srcs[0]``.

    >>> average(["run/step-800", "run/step-900", "run/step-1000"], "soup/")  # doctest: +SKIP
    """
    if isinstance(srcs, str | os.PathLike) or len(srcs) < 2:
        raise DestinationError(
            "average needs at least two checkpoints", "srcs", "give a list of SRC paths"
        )
    options = {"with": [str(s) for s in srcs[1:]], "weights": weights}
    return _verb("average", srcs[0], dest, options, **run_options)


def merge_lora(
    base: PathLike,
    adapter: PathLike,
    dest: PathLike | None = None,
    *,
    scale: float = 1.0,
    **run_options: Unpack[RunOptions],
) -> Result:
    """Merge a PEFT LoRA/DoRA adapter (a folder or Hub id) into BASE, as PEFT's
    ``merge_and_unload`` does (bit for bit on float32 bases); ``scale`` multiplies every delta.

    >>> merge_lora("llama-base/", "my-adapter/", "llama-merged/")  # doctest: +SKIP
    """
    options = {"adapter": str(adapter), "scale": scale}
    return _verb("merge-lora", base, dest, options, **run_options)


def drop(
    src: PathLike,
    dest: PathLike | None = None,
    patterns: str | Sequence[str] = (),
    exclude: str | Sequence[str] = (),
    *,
    strip_prefix: str | Sequence[str] = (),
    **run_options: Unpack[RunOptions],
) -> Result:
    """Write the checkpoint without the selected tensors (patterns match stripped names).

    >>> drop("bert-mlm/", "bert-headless/", ["cls.*"],
    ...      config_set={"architectures": ["BertModel"]})  # doctest: +SKIP
    """
    options = {"patterns": patterns, "exclude": exclude}
    return _verb("drop", src, dest, options, strip_prefix=strip_prefix, **run_options)


def reinit(
    src: PathLike,
    dest: PathLike | None = None,
    patterns: str | Sequence[str] = (),
    exclude: str | Sequence[str] = (),
    *,
    top_layers: int | None = None,
    pooler: bool = False,
    seed: int = 0,
    std: float | None = None,
    stack: str | None = None,
    rules: str = "auto",
    strip_prefix: str | Sequence[str] = (),
    **run_options: Unpack[RunOptions],
) -> Result:
    """Re-initialise the selected tensors and write a new checkpoint: with BERT's rules
    (``rules="bert"``, torch-free), the architecture's own init (``"model"``), or BERT's for the
    BERT family and the model's otherwise (``"auto"``).

    Values depend on (seed, output tensor name) only (and, for ``"model"``, the versions of
    transformers and torch).

    >>> reinit("bert/", "bert-top3/", top_layers=3, pooler=True, seed=0)  # doctest: +SKIP
    """
    options = {
        "patterns": patterns,
        "exclude": exclude,
        "top_layers": top_layers,
        "pooler": pooler,
        "seed": seed,
        "std": std,
        "stack": stack,
        "rules": rules,
    }
    return _verb("reinit", src, dest, options, strip_prefix=strip_prefix, **run_options)


def cast(
    src: PathLike,
    dest: PathLike | None = None,
    dtype: str = "",
    patterns: str | Sequence[str] = (),
    exclude: str | Sequence[str] = (),
    **run_options: Unpack[RunOptions],
) -> Result:
    """Cast floating tensors (all, or the selected ones) to ``bf16``, ``fp16`` or ``fp32``,
    bit for bit as torch's ``.to()``; config.json's dtype follows.

    >>> cast("bert/", "bert-bf16/", "bf16")  # doctest: +SKIP
    """
    options = {"dtype": dtype or None, "patterns": patterns, "exclude": exclude}
    return _verb("cast", src, dest, options, **run_options)


def rename(
    src: PathLike,
    dest: PathLike | None = None,
    *,
    sub: Sequence[Sequence[str]] = (),
    add_prefix: str | None = None,
    strip_prefix: str | Sequence[str] = (),
    **run_options: Unpack[RunOptions],
) -> Result:
    """Rename tensors: ``strip_prefix``, then each ``(REGEX, REPL)`` of ``sub`` with
    ``re.sub``, then ``add_prefix``. Bytes are copied unchanged.

    >>> rename("ddp/", "clean/", strip_prefix="module.")  # doctest: +SKIP
    """
    options = {
        "sub": [list(p) for p in sub],
        "add_prefix": add_prefix,
        "strip_prefix": strip_prefix,
    }
    # strip_prefix is rename's own option here: the names change in the output too
    return _verb("rename", src, dest, options, **run_options)


def layers(
    src: PathLike,
    dest: PathLike | None = None,
    *,
    keep: str | Sequence[int | str] | None = None,
    drop: str | Sequence[int | str] | None = None,
    stack: str | None = None,
    **run_options: Unpack[RunOptions],
) -> Result:
    """Keep (in a new order, repeats allowed) or drop blocks of a layer stack, renumbered
    0..k-1 and copied byte for byte; config.json's layer count follows.

    >>> layers("bert-base/", "student/", keep="0,2,4,7,9,11")  # doctest: +SKIP
    """
    options = {"keep": keep, "drop": drop, "stack": stack}
    return _verb("layers", src, dest, options, **run_options)


def resize_vocab(
    src: PathLike,
    dest: PathLike | None = None,
    size: int | None = None,
    *,
    init: str = "mean",
    seed: int = 0,
    **run_options: Unpack[RunOptions],
) -> Result:
    """Grow or shrink every vocabulary-sized tensor to ``size`` rows (new rows: ``mean`` of
    the existing ones, or ``normal``); config.json's vocab_size follows.

    >>> resize_vocab("bert/", "bert-more-tokens/", 30600)  # doctest: +SKIP
    """
    options = {"size": size, "init": init, "seed": seed}
    return _verb("resize-vocab", src, dest, options, **run_options)


def add_tokens(
    src: PathLike,
    dest: PathLike | None = None,
    tokens: str | Sequence[str] = (),
    *,
    tokens_file: PathLike | None = None,
    special: bool = False,
    init: str = "pieces",
    pad_to_multiple_of: int | None = None,
    seed: int = 0,
    **run_options: Unpack[RunOptions],
) -> Result:
    """Add tokens to SRC's tokenizer (as ``add_tokens`` + ``save_pretrained``) and grow the
    embeddings, an untied head and its bias to match; a new row is the mean of the rows of the
    token's pieces (``init="pieces"``), of all rows (``"mean"``), or N(0, initializer_range).

    >>> add_tokens("bert/", "bert-chem/", ["[ION]", "benzene"])  # doctest: +SKIP
    """
    options = {
        "tokens": [tokens] if isinstance(tokens, str) else list(tokens),
        "tokens_file": None if tokens_file is None else str(tokens_file),
        "special": special,
        "init": init,
        "pad_to_multiple_of": pad_to_multiple_of,
        "seed": seed,
    }
    return _verb("add-tokens", src, dest, options, **run_options)


def config(
    src: PathLike,
    dest: PathLike | None = None,
    set: dict[str, Any] | Sequence[str] | None = None,
    **run_options: Unpack[RunOptions],
) -> Result:
    """Set config.json keys (``{"architectures": ["BertModel"]}`` or ``["KEY=JSON", ...]``);
    the tensors are copied unchanged.

    >>> config("bert-headless/", "fixed/", {"architectures": ["BertModel"]})  # doctest: +SKIP
    """
    values = list(set) if set is not None and not isinstance(set, dict) else set
    return _verb("config", src, dest, {"set": values}, **run_options)
