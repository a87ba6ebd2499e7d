"""The public verbs: each builds a one-step recipe (two with ``strip_prefix``) and runs it
through the same path as :func:`apply`: open (headers only) -> plan -> check DEST -> execute.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from .errors import DestinationError, PatternError, SelectionError
from .formats.checkpoint import lightning_hint, open_checkpoint
from .formats.prefixes import normalise_prefixes, strip_prefixes
from .formats.sidefiles import NO_CONFIG_WARNING, plan_side_files, with_reference_files
from .ops.drop import dropped_head_hint
from .patterns import as_patterns
from .plan import Plan
from .recipe import Recipe, Step, plan_recipe
from .run.card import README, SOURCE_CARD_WARNING, model_card
from .run.destination import check_destination, is_single_file
from .run.execute import execute
from .run.layout import DEFAULT_MAX_SHARD_SIZE, shard_limit
from .run.writer import WriteResult

if TYPE_CHECKING:  # typing.Unpack is Python 3.11's
    from typing_extensions import Unpack

PathLike = str | os.PathLike[str]


class RunOptions(TypedDict, total=False):
    """The keywords every writing function takes, as every writing command takes these options
    (defined once; :func:`run` documents them). A test walks the CLI to keep the two the same."""

    dry_run: bool
    max_shard_size: int | str
    overwrite: bool
    threads: int | None
    revision: str | None
    config_set: dict[str, Any] | Sequence[str] | None
    config_from: PathLike | None
    card: bool
    progress: Callable[[int, int], None] | None


@dataclass(frozen=True)
class Result:
    """What a run did: its plan, what was written (None for a dry run) and what the bytes told
    (values a cast lost)."""

    plan: Plan
    written: WriteResult | None
    notes: tuple[str, ...] = ()
    cloned_bytes: int = 0  # output bytes whose blocks are shared with the source (XFS, btrfs)

    def to_json(self) -> dict[str, Any]:
        out = self.plan.to_json()
        out["warnings"] = [*out["warnings"], *self.notes]
        if self.written is not None:
            out["files"] = list(self.written.files)
            out["copied"] = list(self.written.copied)
            out["total_bytes"] = self.written.total_bytes
            out["cloned_bytes"] = self.cloned_bytes
            out["written_bytes"] = self.written.total_bytes - self.cloned_bytes
        out["dry_run"] = self.written is None
        return out


def run(
    recipe: Recipe,
    src: PathLike,
    dest: PathLike | None,
    *,
    verb: str = "apply",
    strip_prefix: str | Sequence[str] = (),
    config_set: dict[str, Any] | Sequence[str] | None = None,
    config_from: PathLike | None = None,
    revision: str | None = None,
    dry_run: bool = False,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
    threads: int | None = None,
    card: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Result:
    """Plan ``recipe`` over SRC, check DEST (on a dry run too, so that a dry run that passes
    means the real run can start), then stream the plan into DEST unless ``dry_run``.
    ``progress(bytes_now, total_bytes)`` follows the writing; ``threads`` draws random values
    and casts (default: the CPUs this process may use).

    ``strip_prefix`` (the verbs' ``--strip-prefix``) reads SRC's names without a wrapper
    prefix, as if they had been saved that way; in recipes the ``rename`` step does this.
    ``config_set`` (``--config-set``) sets config.json keys after the recipe's steps.
    ``card`` (``--card``) writes DEST/README.md as a model card that says what was done.
    SRC may be a Hugging Face repo id (``org/name[@revision]``, or ``revision=``) that is not a
    local path. DEST may be None for a dry run: the plan alone."""
    if dest is None and not dry_run:
        raise DestinationError("no destination given", "dest", "give DEST, or dry_run=True")
    if config_set:  # --config-set: one more step, after the others
        from .ops import OPERATIONS

        values = OPERATIONS["config"].normalise(
            {"set": list(config_set) if not isinstance(config_set, dict) else config_set},
            "--config-set",
            {"set": "--config-set"},
        )
        recipe = Recipe((*recipe.steps, Step("config", values)))
    ckpt = open_checkpoint(src, revision, config_from)
    strip = normalise_prefixes(ckpt, as_patterns(strip_prefix))
    ckpt = strip_prefixes(ckpt, strip)
    ckpt.require_valid_config()
    try:
        plan = plan_recipe(recipe, ckpt, label_steps=verb == "apply")
    except (SelectionError, PatternError) as exc:
        prefix_hint = lightning_hint(ckpt) if not strip else ""
        if not prefix_hint:
            raise
        raise type(exc)(exc.what, exc.where, f"{prefix_hint}; or {exc.hint}") from None
    plan = replace(
        plan, destination="" if dest is None else str(dest), verb=verb, input_strip=tuple(strip)
    )
    hint = dropped_head_hint(plan)
    if hint:
        plan = plan.warn(hint)
    shard_size = shard_limit(max_shard_size)
    if dest is None:
        return Result(plan, None)
    check_destination(ckpt, Path(dest), overwrite)
    if not is_single_file(dest):
        side = plan_side_files(ckpt.root, ckpt.own_files)
        if ckpt.reference is not None:
            side = with_reference_files(side, ckpt.reference)
        elif ckpt.training:
            side = replace(side, notes=(*side.notes, NO_CONFIG_WARNING))
        plan = replace(plan, side_files=side, warnings=(*plan.warnings, *side.notes))
        if not card and any(rel == README for rel, _ in side.files):
            plan = plan.warn(SOURCE_CARD_WARNING)
    extra = {}
    if card and not is_single_file(dest):
        hub_id = None if Path(src).exists() else str(src).split("@", 1)[0]
        extra[README] = model_card(plan, ckpt.root, hub_id)
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
        inputs=[open_checkpoint(p) for p in plan.inputs],
        extra_files=extra,
    )
    return Result(plan, done.written, done.notes, done.cloned_bytes)


def apply(
    recipe: Recipe | Sequence[dict[str, Any]] | dict[str, Any] | PathLike,
    src: PathLike,
    dest: PathLike | None = None,
    **run_options: Unpack[RunOptions],
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
    return run(recipe, src, dest, **run_options)


def verb_recipe(verb: str, options: dict[str, Any], labels: dict[str, str] | None = None) -> Recipe:
    """The one-step recipe a verb runs. ``labels`` name the options in errors (the CLI's
    flags; the keys by default)."""
    from .ops import OPERATIONS

    return Recipe((Step(verb, OPERATIONS[verb].normalise(options, verb, labels)),))


def _verb(
    verb: str, src: PathLike, dest: PathLike | None, options: dict[str, Any], **run_options: Any
) -> Result:
    """Run one operation as its CLI verb does; ``run_options`` are :func:`run`'s keywords (the
    options every writing command has)."""
    return run(verb_recipe(verb, options), src, dest, verb=verb, **run_options)


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
    ``max_shard_size`` is bytes or a size such as ``"50KB"``; ``config_from`` a model folder or
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
