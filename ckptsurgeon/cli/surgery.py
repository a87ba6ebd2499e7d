"""The writing commands: one per operation, built from its definition (``SRC DEST``,
``SRC SRC... DEST`` or ``BASE INPUT DEST``, its options, the write options), and ``apply``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from ..ops import OPERATIONS, Operation
from ..ops.base import STRIP_PREFIX
from .group import main
from .options import _click_option, _write_options
from .render import _progress, _report


def _verb_command(operation: Operation) -> None:
    """Add the CLI verb of an operation: SRC DEST, its options, the write options."""
    flags = {o.key: o.flags[-1] for o in operation.options}
    takes_strip = operation.strip_prefix

    def callback(
        src: str,
        dest: str,
        dry_run: bool,
        max_shard_size: int,
        overwrite: bool,
        as_json: bool,
        threads: int | None,
        revision: str | None,
        config_set: tuple[str, ...],
        config_from: str | None,
        card: bool,
        **values: Any,
    ) -> None:
        from ..api import verb_recipe

        strip = values.pop("strip_prefix", ()) if takes_strip else ()
        values = {k: [list(p) for p in v] if k == "sub" else v for k, v in values.items()}
        values = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
        recipe = verb_recipe(operation.name, values, labels=flags)
        _run_and_report(
            recipe, src, dest, operation.name, strip, dry_run, max_shard_size, overwrite,
            as_json, threads, revision, config_set, config_from, card,
        )  # fmt: skip

    details = operation.details
    callback.__doc__ = operation.summary + (f"\n\n{details}" if details else "")
    command: Any = callback
    key = operation.inputs
    variadic = bool(key) and operation.option(key).multiple
    if variadic:  # SRC SRC [SRC...] DEST: the first SRC, the rest under the recipe key

        def several(srcs: tuple[str, ...], **kwargs: Any) -> None:
            if len(srcs) < 2:
                raise click.UsageError(f"{operation.name} needs at least two SRC and a DEST")
            kwargs[key] = list(srcs[1:])
            callback(srcs[0], **kwargs)

        several.__doc__ = callback.__doc__
        command = several
    elif key:  # BASE INPUT DEST (merge-lora's ADAPTER)

        def second(base: str, **kwargs: Any) -> None:
            callback(base, **kwargs)

        second.__doc__ = callback.__doc__
        command = second
    command = _write_options(command)
    if takes_strip:
        command = _click_option(STRIP_PREFIX)(command)
    for opt in reversed(operation.options):
        if opt.key != operation.inputs:
            command = _click_option(opt)(command)
    command = click.argument("dest", type=click.Path())(command)
    if variadic:
        command = click.argument("srcs", nargs=-1, metavar="SRC SRC...", type=click.Path())(command)
    elif key:
        command = click.argument(key, metavar=key.upper())(command)
        command = click.argument("base", metavar="BASE", type=click.Path())(command)
    else:
        command = click.argument("src", type=click.Path())(command)
    main.command(operation.name)(command)


for _operation in OPERATIONS.values():
    _verb_command(_operation)


@main.command("apply")
@click.argument("recipe", type=click.Path())
@click.argument("src", type=click.Path())
@click.argument("dest", type=click.Path())
@_write_options
def apply_cmd(
    recipe: str, src: str, dest: str, dry_run: bool, max_shard_size: int, overwrite: bool,
    as_json: bool, threads: int | None, revision: str | None, config_set: tuple[str, ...],
    config_from: str | None, card: bool,
) -> None:  # fmt: skip
    """Run the steps of RECIPE (YAML or JSON) over SRC in one streaming pass; write DEST.

    A recipe is `steps:`, a list of `{op: NAME, ...}` whose keys are the verbs' long option
    names with '-' as '_' (patterns for -p, exclude for -x; lists for repeatable options;
    rename's sub is a list of [REGEX, REPL] pairs). Steps apply in order, each to the names and
    dtypes left by the steps before it.
    """
    from ..recipe import Recipe

    _run_and_report(
        Recipe.load(recipe), src, dest, "apply", (), dry_run, max_shard_size, overwrite,
        as_json, threads, revision, config_set, config_from, card,
    )  # fmt: skip


def _run_and_report(
    recipe: Any,
    src: str,
    dest: str,
    verb: str,
    strip: Sequence[str],
    dry_run: bool,
    max_shard_size: int,
    overwrite: bool,
    as_json: bool,
    threads: int | None,
    revision: str | None,
    config_set: Sequence[str] = (),
    config_from: str | None = None,
    card: bool = False,
) -> None:
    """Every writing command: run its recipe with a progress bar, then render the result."""
    from ..api import run

    with _progress(verb) as bar:
        result = run(
            recipe,
            src,
            dest,
            verb=verb,
            strip_prefix=strip,
            dry_run=dry_run,
            max_shard_size=max_shard_size,
            overwrite=overwrite,
            threads=threads,
            progress=bar,
            revision=revision,
            config_set=list(config_set),
            config_from=config_from,
            card=card,
        )
    _report(result, as_json, dry_run=dry_run)
