"""One run, its stages in order: open SRC (headers only) -> plan the recipe -> check DEST -> plan
the side files -> stream the plan into DEST. :func:`run` is what every writing command and
:func:`apply` call; :mod:`ckptsurgeon.api` holds one typed function per command on top of it.
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
    if card and is_single_file(dest):
        plan = plan.warn("--card is not written: DEST is a single .safetensors file")
    elif card:
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
