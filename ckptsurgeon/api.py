"""The public verbs: each builds a one-step recipe (two with ``strip_prefix``) and runs it
through the same path as :func:`apply`: open (headers only) -> plan -> check DEST -> execute.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .checkpoint import normalise_prefixes, open_checkpoint, strip_prefixes
from .execute import execute
from .patterns import as_patterns
from .plan import Plan
from .recipe import Recipe, Step, plan_recipe
from .sidefiles import plan_side_files
from .sizes import parse_size
from .writer import DEFAULT_MAX_SHARD_SIZE, WriteResult, check_destination, is_single_file

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class Result:
    """What a run did: its plan, what was written (None for a dry run) and what the bytes told
    (values a cast lost)."""

    plan: Plan
    written: WriteResult | None
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out = self.plan.to_json()
        out["warnings"] = [*out["warnings"], *self.notes]
        if self.written is not None:
            out["files"] = list(self.written.files)
            out["copied"] = list(self.written.copied)
            out["total_bytes"] = self.written.total_bytes
        out["dry_run"] = self.written is None
        return out


def run(
    recipe: Recipe,
    src: PathLike,
    dest: PathLike,
    *,
    verb: str = "apply",
    strip_prefix: str | Sequence[str] = (),
    revision: str | None = None,
    dry_run: bool = False,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Result:
    """Plan ``recipe`` over SRC, check DEST (on a dry run too, so that a dry run that passes
    means the real run can start), then stream the plan into DEST unless ``dry_run``.
    ``progress(bytes_now, total_bytes)`` follows the writing; ``threads`` draws random values
    and casts (default: the CPUs this process may use).

    ``strip_prefix`` (the verbs' ``--strip-prefix``) reads SRC's names without a wrapper
    prefix, as if they had been saved that way; in recipes the ``rename`` step does this.
    SRC may be a Hugging Face repo id (``org/name[@revision]``, or ``revision=``) that is not a
    local path."""
    ckpt = open_checkpoint(src, revision)
    strip = normalise_prefixes(ckpt, as_patterns(strip_prefix))
    ckpt = strip_prefixes(ckpt, strip)
    ckpt.require_valid_config()
    plan = plan_recipe(recipe, ckpt, label_steps=verb == "apply")
    plan = replace(plan, destination=str(dest), verb=verb, input_strip=tuple(strip))
    shard_size = parse_size(max_shard_size) if isinstance(max_shard_size, str) else max_shard_size
    check_destination(ckpt, Path(dest), overwrite)
    if not is_single_file(dest):
        side = plan_side_files(ckpt.root, ckpt.own_files)
        plan = replace(plan, side_files=side, warnings=(*plan.warnings, *side.notes))
    if dry_run:
        return Result(plan, None)
    done = execute(
        plan,
        ckpt,
        dest,
        max_shard_size=shard_size,
        overwrite=overwrite,
        threads=threads,
        progress=progress,
    )
    return Result(plan, done.written, done.notes)


def apply(
    recipe: Recipe | Sequence[dict[str, Any]] | dict[str, Any] | PathLike,
    src: PathLike,
    dest: PathLike,
    *,
    dry_run: bool = False,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    revision: str | None = None,
) -> Result:
    """Run a recipe (a :class:`Recipe`, its steps as Python data, or a YAML/JSON file) over SRC
    in one streaming pass.

    >>> apply([{"op": "drop", "patterns": ["cls.*"]}, {"op": "cast", "dtype": "bf16"}],
    ...       "bert/", "bert-bf16/")  # doctest: +SKIP
    """
    if isinstance(recipe, str | os.PathLike):
        recipe = Recipe.load(recipe)
    elif not isinstance(recipe, Recipe):
        recipe = Recipe.parse(recipe)
    return run(
        recipe,
        src,
        dest,
        dry_run=dry_run,
        max_shard_size=max_shard_size,
        overwrite=overwrite,
        threads=threads,
        progress=progress,
        revision=revision,
    )


def verb_recipe(verb: str, options: dict[str, Any], labels: dict[str, str] | None = None) -> Recipe:
    """The one-step recipe a verb runs. ``labels`` name the options in errors (the CLI's
    flags; the keys by default)."""
    from .ops import OPERATIONS

    return Recipe((Step(verb, OPERATIONS[verb].normalise(options, verb, labels)),))


def _verb(
    verb: str,
    src: PathLike,
    dest: PathLike,
    options: dict[str, Any],
    *,
    strip_prefix: Any = (),
    dry_run: bool = False,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
    threads: int | None = None,
) -> Result:
    return run(
        verb_recipe(verb, options),
        src,
        dest,
        verb=verb,
        strip_prefix=strip_prefix,
        dry_run=dry_run,
        max_shard_size=max_shard_size,
        overwrite=overwrite,
        threads=threads,
    )


def convert(
    src: PathLike,
    dest: PathLike,
    *,
    dry_run: bool = False,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
    strip_prefix: str | Sequence[str] = (),
) -> Result:
    """Rewrite any readable checkpoint as safetensors with every value unchanged.

    ``strip_prefix`` removes wrapper prefixes such as ``module.`` from the names;
    ``max_shard_size`` is bytes or a size such as ``"50KB"``.

    >>> convert("bert-bin/", "bert-safetensors/")  # doctest: +SKIP
    """
    return _verb(
        "convert",
        src,
        dest,
        {},
        strip_prefix=strip_prefix,
        dry_run=dry_run,
        max_shard_size=max_shard_size,
        overwrite=overwrite,
    )


def drop(
    src: PathLike,
    dest: PathLike,
    patterns: str | Sequence[str],
    exclude: str | Sequence[str] = (),
    *,
    dry_run: bool = False,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
    strip_prefix: str | Sequence[str] = (),
) -> Result:
    """Write the checkpoint without the selected tensors (patterns match stripped names).

    >>> drop("bert-mlm/", "bert-headless/", ["cls.*"])  # doctest: +SKIP
    """
    return _verb(
        "drop",
        src,
        dest,
        {"patterns": patterns, "exclude": exclude},
        strip_prefix=strip_prefix,
        dry_run=dry_run,
        max_shard_size=max_shard_size,
        overwrite=overwrite,
    )


def reinit(
    src: PathLike,
    dest: PathLike,
    patterns: str | Sequence[str] = (),
    exclude: str | Sequence[str] = (),
    *,
    top_layers: int | None = None,
    pooler: bool = False,
    seed: int = 0,
    std: float | None = None,
    stack: str | None = None,
    rules: str = "auto",
    dry_run: bool = False,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
    threads: int | None = None,
    strip_prefix: str | Sequence[str] = (),
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
    return _verb(
        "reinit",
        src,
        dest,
        options,
        strip_prefix=strip_prefix,
        dry_run=dry_run,
        max_shard_size=max_shard_size,
        overwrite=overwrite,
        threads=threads,
    )


def cast(
    src: PathLike,
    dest: PathLike,
    dtype: str,
    patterns: str | Sequence[str] = (),
    exclude: str | Sequence[str] = (),
    *,
    dry_run: bool = False,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
) -> Result:
    """Cast floating tensors (all, or the selected ones) to ``bf16``, ``fp16`` or ``fp32``,
    bit for bit as torch's ``.to()``; config.json's dtype follows.

    >>> cast("bert/", "bert-bf16/", "bf16")  # doctest: +SKIP
    """
    return _verb(
        "cast",
        src,
        dest,
        {"dtype": dtype, "patterns": patterns, "exclude": exclude},
        dry_run=dry_run,
        max_shard_size=max_shard_size,
        overwrite=overwrite,
    )


def rename(
    src: PathLike,
    dest: PathLike,
    *,
    sub: Sequence[Sequence[str]] = (),
    add_prefix: str | None = None,
    strip_prefix: str | Sequence[str] = (),
    dry_run: bool = False,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
) -> Result:
    """Rename tensors: ``strip_prefix``, then each ``(REGEX, REPL)`` of ``sub`` with
    ``re.sub``, then ``add_prefix``. Bytes are copied unchanged.

    >>> rename("ddp/", "clean/", strip_prefix="module.")  # doctest: +SKIP
    """
    return _verb(
        "rename",
        src,
        dest,
        {"sub": [list(p) for p in sub], "add_prefix": add_prefix, "strip_prefix": strip_prefix},
        dry_run=dry_run,
        max_shard_size=max_shard_size,
        overwrite=overwrite,
    )


def layers(
    src: PathLike,
    dest: PathLike,
    *,
    keep: str | Sequence[int | str] | None = None,
    drop: str | Sequence[int | str] | None = None,
    stack: str | None = None,
    dry_run: bool = False,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
) -> Result:
    """Keep (in a new order, repeats allowed) or drop blocks of a layer stack, renumbered
    0..k-1 and copied byte for byte; config.json's layer count follows.

    >>> layers("bert-base/", "student/", keep="0,2,4,7,9,11")  # doctest: +SKIP
    """
    return _verb(
        "layers",
        src,
        dest,
        {"keep": keep, "drop": drop, "stack": stack},
        dry_run=dry_run,
        max_shard_size=max_shard_size,
        overwrite=overwrite,
    )


def resize_vocab(
    src: PathLike,
    dest: PathLike,
    size: int,
    *,
    init: str = "mean",
    seed: int = 0,
    dry_run: bool = False,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
) -> Result:
    """Grow or shrink every vocabulary-sized tensor to ``size`` rows (new rows: ``mean`` of
    the existing ones, or ``normal``); config.json's vocab_size follows.

    >>> resize_vocab("bert/", "bert-more-tokens/", 30600)  # doctest: +SKIP
    """
    return _verb(
        "resize-vocab",
        src,
        dest,
        {"size": size, "init": init, "seed": seed},
        dry_run=dry_run,
        max_shard_size=max_shard_size,
        overwrite=overwrite,
    )
