"""The command line: parse, call the library, render. Data on stdout, warnings on stderr.

Exit status: 0 success, 2 any error (usage, missing path, corrupt or unsafe file, existing
destination...), 1 reserved for ``diff`` finding differences.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import click

from .. import interrupts
from ..errors import CkptSurgeonError
from ..ops import OPERATIONS, Operation
from ..ops.base import EXCLUDE, PATTERNS, STRIP_PREFIX
from ..sizes import format_size
from ..version import __version__
from .options import _click_option, _json_option, _quiet_option, _revision_option, _write_options
from .render import (
    _fmt,
    _progress,
    _quiet,
    _render_diff,
    _report,
    _shape,
    _table,
    emit_json,
    warn,
)

EXIT_ERROR = 2


class CommandError(click.ClickException):
    exit_code = EXIT_ERROR


def _debug_enabled(ctx: click.Context | None) -> bool:
    if os.environ.get("CKPTSURGEON_DEBUG"):
        return True
    while ctx is not None:
        if ctx.obj and ctx.obj.get("debug"):
            return True
        ctx = ctx.parent
    return False


def _one_blas_thread() -> None:
    """Give numpy's OpenBLAS one thread unless the user chose a count (before numpy loads).

    No command does linear algebra, but OpenBLAS starts a thread per core when numpy is imported
    and they spin for a while: about 0.1 s of a core, which on a two-core machine was taken from
    the kernel copies and the draws (bert-base ``reinit`` 0.34 s -> 0.31 s). Commands draw in
    parallel with their own threads; BLAS never does work here.
    """
    if not any(
        os.environ.get(v) for v in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")
    ):
        os.environ["OPENBLAS_NUM_THREADS"] = "1"


class Group(click.Group):
    """Turns library errors into one ``Error: ...`` line and exit 2 (``--debug``: traceback)."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        interrupts.install()  # before any command imports torch: see interrupts.py
        _one_blas_thread()
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "ckptsurgeon"
            click.echo(f"Error: {exc.format_message()} (see '{where} --help')", err=True)
            sys.exit(EXIT_ERROR)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort as exc:
            if isinstance(exc.__cause__, KeyboardInterrupt) or interrupts.pending() is not None:
                _interrupted(exc.__cause__ or KeyboardInterrupt())  # a Ctrl-C click caught
            click.echo("Error: aborted; nothing was written", err=True)
            sys.exit(EXIT_ERROR)
        except (KeyboardInterrupt, interrupts.Terminated) as exc:
            _interrupted(exc)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CkptSurgeonError as exc:
            _after_a_swallowed_interrupt()
            if _debug_enabled(ctx):
                traceback.print_exc()
            raise CommandError(exc.message) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except (KeyboardInterrupt, interrupts.Terminated) as exc:
            _interrupted(exc)
        except BrokenPipeError:
            # whoever read stdout went away (`... | head`): not an error of this command, whose
            # own status stands (diff: 1 when something differs)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit((ctx.obj or {}).get("exit_code", 0))
        except Exception as exc:  # a bug or an unexpected OS error: still one clean line
            _after_a_swallowed_interrupt()
            if _debug_enabled(ctx):
                traceback.print_exc()
            raise CommandError(
                f"unexpected {type(exc).__name__}: {exc}: rerun with --debug and report it"
            ) from None


def _after_a_swallowed_interrupt() -> None:
    """An error that follows a signal whose exception something swallowed is the signal's doing.

    A Ctrl-C inside ``import torch`` can be caught there and leave torch half-imported, so the
    next use fails with an ImportError ("cannot load module more than once per process"): the
    user interrupted the job, and its status says so (130), not "unexpected error" (2)."""
    exc = interrupts.pending()
    if exc is not None:
        _interrupted(exc)


def _interrupted(exc: BaseException) -> None:
    what = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"terminated by {exc}"
    try:
        click.echo(f"Error: {what}; nothing was written", err=True)
    finally:
        sys.exit(interrupts.exit_status(exc))


@click.group(
    cls=Group,
    context_settings={
        "help_option_names": ["-h", "--help"],
        "terminal_width": 100,
        "max_content_width": 100,
    },
)
@click.version_option(__version__, prog_name="ckptsurgeon")
@click.option("--debug", is_flag=True, help="Show the full traceback on errors.")
@_quiet_option
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    # the help text is made from the commands themselves, once they are all added (below)
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


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
        **values: Any,
    ) -> None:
        from ..api import verb_recipe

        strip = values.pop("strip_prefix", ()) if takes_strip else ()
        values = {k: [list(p) for p in v] if k == "sub" else v for k, v in values.items()}
        values = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
        recipe = verb_recipe(operation.name, values, labels=flags)
        _run_and_report(
            recipe, src, dest, operation.name, strip, dry_run, max_shard_size, overwrite,
            as_json, threads, revision, config_set, config_from,
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
    config_from: str | None,
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
        as_json, threads, revision, config_set, config_from,
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
        )
    _report(result, as_json, dry_run=dry_run)


@main.command("inspect")
@click.argument("src", type=click.Path())
@_click_option(PATTERNS)
@_quiet_option
@_revision_option
@_json_option("one object instead of text")
@click.option(
    "--stats", is_flag=True, help="Add mean, std, min, max, NaN and Inf counts (reads the data)."
)
def inspect_cmd(
    src: str, patterns: tuple[str, ...], revision: str | None, as_json: bool, stats: bool
) -> None:
    """Show what is inside SRC: format, files, tensors, parameters, metadata."""
    from ..tools.inspection import inspect

    with _progress("inspect --stats") as bar:
        info = inspect(src, patterns, stats=stats, on_bytes=bar, revision=revision)
    for note in info.checkpoint.notes:
        warn(note)
    if as_json:
        emit_json(info.to_json())
        return
    ckpt = info.checkpoint
    kind = ckpt.format + (f", sharded in {len(ckpt.files)} files" if ckpt.sharded else "")
    kind += f" ({ckpt.detail})" if ckpt.detail else ""
    click.echo(f"format:     {kind}")
    if ckpt.index_file is not None:
        click.echo(f"index:      {ckpt.index_file}")
    click.echo("files:      " + ", ".join(str(f) for f in ckpt.files))
    click.echo(f"tensors:    {len(info.tensors)}")
    click.echo(f"parameters: {info.total_params:,}")
    click.echo(f"bytes:      {info.total_bytes:,} ({format_size(info.total_bytes)})")
    click.echo("dtypes:     " + ", ".join(f"{d} ({n})" for d, n in info.dtypes.items()))
    meta = ", ".join(f"{k}={v}" for k, v in sorted(ckpt.metadata.items())) or "(none)"
    click.echo(f"metadata:   {meta}")
    if ckpt.aliases:
        click.echo(
            "tied:       " + ", ".join(f"{a} -> {c}" for a, c in sorted(ckpt.aliases.items()))
        )
    if ckpt.not_read:
        click.echo("not read:   " + ", ".join(ckpt.not_read))
    click.echo()
    headers = ["name", "dtype", "shape", "params"]
    if info.stats is not None:
        headers += ["mean", "std", "min", "max", "nan", "inf"]
    rows = []
    for t in info.tensors:
        row = [t.name, t.dtype, _shape(t.shape), f"{t.params:,}"]
        if info.stats is not None:
            s = info.stats[t.name]
            row += [_fmt(s.mean), _fmt(s.std), _fmt(s.min), _fmt(s.max), str(s.nan), str(s.inf)]
        rows.append(row)
    click.echo(_table(rows, headers))


@main.command("verify")
@click.argument("path", metavar="DIR", type=click.Path())
@click.option(
    "--class",
    "model_class",
    metavar="NAME",
    help="Model class [default: config.json's architectures].",
)
@click.option(
    "--expect-missing",
    multiple=True,
    metavar="PATTERN",
    help="Glob of keys that may be missing (and must be); repeatable.",
)
@click.option("--against", metavar="SRC", help="Check that every unchanged tensor equals SRC's.")
@_json_option("every check")
@_quiet_option
@click.pass_context
def verify_cmd(
    ctx: click.Context,
    path: str,
    model_class: str | None,
    expect_missing: tuple[str, ...],
    against: str | None,
    as_json: bool,
) -> None:
    """Gate a release: DIR loads with stock from_pretrained and is what it should be.

    Checks: no unexpected or mismatched keys, nothing left on the meta device, missing keys
    exactly those matched by --expect-missing, a finite forward pass on a dummy batch; with
    --against, every tensor the output's ckptsurgeon metadata does not name as changed equals
    SRC's. Exit 0 when every check passes, 1 when one fails (one line each), 2 on error.
    """
    from ..tools.verify import verify

    result = verify(
        path,
        model_class=model_class,
        expect_missing=expect_missing,
        against=against,
        quiet=_quiet(),
    )
    status = 0 if result.ok else 1
    ctx.obj["exit_code"] = status
    if as_json:
        emit_json(result.to_json())
    else:
        for c in result.checks:
            click.echo(f"{'ok  ' if c.ok else 'FAIL'}  {c.name}: {c.detail}")
        click.echo(f"{result.model_class}: {'all checks pass' if result.ok else 'FAILED'}")
    ctx.exit(status)


@main.command("diff")
@click.argument("a", type=click.Path())
@click.argument("b", type=click.Path())
@_click_option(PATTERNS)
@_click_option(EXCLUDE)
@_quiet_option
@click.option(
    "--atol",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Absolute tolerance for 'close'.",
)
@click.option(
    "--rtol",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Relative tolerance (of |b|) for 'close'.",
)
@click.option(
    "--names-only", is_flag=True, help="Compare names, dtypes and shapes from headers alone."
)
@click.option(
    "--strip-prefix-a", metavar="P", help="Remove prefix P from A's names before aligning."
)
@click.option(
    "--strip-prefix-b", metavar="P", help="Remove prefix P from B's names before aligning."
)
@click.option(
    "--normalize",
    is_flag=True,
    help="Fold module./_orig_mod. prefixes, gamma/beta and tied aliases.",
)
@click.option(
    "--ignore-dtype",
    is_flag=True,
    help="Compare values across dtypes (upcast): identical/close/changed by value, not "
    "dtype_mismatch.",
)
@click.option(
    "--plot",
    "plot",
    metavar="FILE",
    help="Also draw a heatmap of the change by layer and module (.png, .svg or .html).",
)
@click.option("--all", "show_all", is_flag=True, help="List every tensor, identical ones too.")
@_json_option("one object")
@click.pass_context
def diff_cmd(
    ctx: click.Context,
    a: str,
    b: str,
    patterns: tuple[str, ...],
    exclude: tuple[str, ...],
    atol: float,
    rtol: float,
    names_only: bool,
    strip_prefix_a: str | None,
    strip_prefix_b: str | None,
    normalize: bool,
    ignore_dtype: bool,
    plot: str | None,
    show_all: bool,
    as_json: bool,
) -> None:
    """Compare checkpoints A and B tensor by tensor.

    Statuses: identical, close (within --atol/--rtol), changed, dtype_mismatch, shape_mismatch,
    only_in_a, only_in_b (same_header with --names-only). Exit 0 when nothing differs beyond
    tolerance, 1 when something does, 2 on error.
    """
    from ..tools.compare import diff

    with _progress("diff") as bar:
        result = diff(
            a,
            b,
            patterns,
            exclude,
            atol=atol,
            rtol=rtol,
            names_only=names_only,
            strip_prefix_a=strip_prefix_a,
            strip_prefix_b=strip_prefix_b,
            normalize=normalize,
            ignore_dtype=ignore_dtype,
            plot=plot,
            on_bytes=bar,
        )
    status = 0 if result.identical else 1
    ctx.obj["exit_code"] = status  # kept when the reader closes the pipe early
    if as_json:
        emit_json(result.to_json(include_all=show_all))
    else:
        _render_diff(result, show_all)
    ctx.exit(status)


def _main_help() -> str:
    """The group's help: every command, as registered (none can be left out of the summary)."""
    names = sorted(main.commands)
    return (
        "Offline surgery on transformer checkpoints: " + ", ".join(names) + ".\n\n"
        "SRC is a model directory (safetensors first, then pytorch_model.bin, sharded or not), "
        "a single .safetensors, .index.json, .bin, .pt or .pth file, or a Hugging Face repo id "
        "(org/name[@revision]). Patterns are globs over full tensor names (case-sensitive, '*' "
        "crosses dots) with brace expansion: 'bert.encoder.layer.{9..11}.*'. 'apply' runs "
        "several steps in one pass."
    )


main.help = _main_help()


if __name__ == "__main__":  # pragma: no cover
    main()
