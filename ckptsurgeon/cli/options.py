"""The CLI's options, built from the operations' own definitions (each ``Option`` once) and
the options every writing command shares (defined here once)."""

from __future__ import annotations

from typing import Any

import click

from ..ops import Option
from ..ops.base import CONFIG_SET
from ..run.layout import shard_limit


class SizeType(click.ParamType):
    """``5GB`` (powers of 1000), ``500MiB`` (powers of 1024), ``source`` or ``auto``."""

    name = "SIZE"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        if isinstance(value, int):
            return value
        try:
            return shard_limit(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _set_quiet(ctx: click.Context, param: Any, value: bool) -> None:
    if value:
        ctx.ensure_object(dict)["quiet"] = True


def _quiet_option(f: Any) -> Any:
    return click.option(
        "-q",
        "--quiet",
        is_flag=True,
        expose_value=False,
        callback=_set_quiet,
        help="No warnings and no progress bar.",
    )(f)


def _json_option(what: str) -> Any:
    """``--json``: the one definition every command's JSON switch is built from."""
    return click.option("--json", "as_json", is_flag=True, help=f"Print {what} as JSON.")


def _click_option(opt: Option, *, key: str | None = None) -> Any:
    """The click option for one operation option (its single definition in ``ops``)."""
    kwargs: dict[str, Any] = {"help": opt.help, "metavar": opt.metavar}
    if opt.kind in ("patterns", "strings", "mapping"):
        kwargs["multiple"] = True
    elif opt.kind == "pairs":
        kwargs.update(multiple=True, nargs=2)
    elif opt.kind == "bool":
        kwargs = {"help": opt.help, "is_flag": True}
    elif opt.kind == "choice":
        kwargs.update(type=click.Choice(opt.choices), metavar=None)
    elif opt.kind == "int":
        kwargs["type"] = click.IntRange(
            None if opt.minimum is None else int(opt.minimum),
            None if opt.maximum is None else int(opt.maximum),
        )
    elif opt.kind == "float":
        kwargs["type"] = click.FloatRange(min=opt.minimum, min_open=opt.min_open)
    if opt.default is not None and opt.kind != "bool":
        kwargs.update(default=opt.default, show_default=True)
    if opt.required:
        kwargs["required"] = True
    return click.option(*opt.flags, key or opt.key, **kwargs)


def _revision_option(f: Any) -> Any:
    return click.option(
        "--revision",
        metavar="REV",
        help="When SRC is a Hugging Face repo id: the branch, tag or commit (or SRC@REV).",
    )(f)


def _threads_option(what: str) -> Any:
    """``--threads N``: the one definition, for what the threads do."""
    return click.option(
        "--threads",
        type=click.IntRange(min=1),
        metavar="N",
        help=f"Threads for {what} [default: the CPUs this process may use].",
    )


def _write_options(f: Any) -> Any:
    f = _quiet_option(f)
    f = _revision_option(f)
    f = _threads_option("random values and casts")(f)
    f = _json_option("the plan and the result")(f)
    f = click.option(
        "--config-from",
        metavar="REF",
        help="A model folder or Hub id whose config.json, generation_config.json and tokenizer "
        "files go beside the weights (a training checkpoint has none).",
    )(f)
    f = click.option(
        "--card",
        is_flag=True,
        help="Write DEST/README.md as a model card that says what was done (the recipe, counts, "
        "config edits), SRC's card below it.",
    )(f)
    f = _click_option(CONFIG_SET)(f)
    f = click.option(
        "--overwrite",
        is_flag=True,
        help="Replace DEST if it is a checkpoint (never SRC or a folder that holds it).",
    )(f)
    f = click.option(
        "--max-shard-size",
        type=SizeType(),
        default="auto",
        show_default=True,
        help="Largest shard of a directory DEST; KB/MB/GB are powers of 1000, KiB/MiB/GiB of "
        "1024; 'source': one file per source file; 'auto': 5GB, and never two of a sharded "
        "safetensors SRC's files in one (so unchanged tensors can be cloned on XFS or btrfs).",
    )(f)
    f = click.option(
        "--dry-run", is_flag=True, help="Check SRC and DEST, print the plan, write nothing."
    )(f)
    return f
