"""The command line: parse, call the library, render. Data on stdout, warnings on stderr.

Exit status: 0 success, 2 any error (usage, missing path, corrupt or unsafe file, existing
destination...), 1 reserved for ``diff`` finding differences.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from collections.abc import Iterator, Sequence
from typing import Any

import click

from . import interrupts
from .dtypes import numel_of
from .errors import CkptSurgeonError
from .ops import OPERATIONS, Operation, Option
from .ops.base import CONFIG_SET, EXCLUDE, PATTERNS, STRIP_PREFIX
from .plan import PAST_TENSE
from .sizes import format_size, parse_size
from .version import __version__

EXIT_ERROR = 2


class SizeType(click.ParamType):
    """``5GB`` (powers of 1000) or ``500MiB`` (powers of 1024)."""

    name = "SIZE"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


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


def _quiet() -> bool:
    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        if ctx.obj and ctx.obj.get("quiet"):
            return True
        ctx = ctx.parent
    return False


def warn(message: str) -> None:
    if not _quiet():
        click.echo(f"Warning: {message}", err=True)


class _Bar:
    """One progress bar on stderr (bytes done of total, rate, time left), made on first use.

    tqdm: small, pure Python, already installed with transformers and huggingface_hub, and it
    draws a single self-updating line where rich would bring a whole rendering engine."""

    def __init__(self, desc: str) -> None:
        self.desc = desc
        self.bar: Any = None

    def __call__(self, n: int, total: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                desc=self.desc,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                leave=False,
                dynamic_ncols=True,
            )
        self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextlib.contextmanager
def _progress(desc: str) -> Iterator[_Bar | None]:
    """A bar only when stderr is a terminal and --quiet is off: nothing reaches a pipe or log."""
    bar = _Bar(desc) if sys.stderr.isatty() and not _quiet() else None
    try:
        yield bar
    finally:
        if bar is not None:
            bar.close()


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


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False))


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


def _shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


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


def _write_options(f: Any) -> Any:
    f = _quiet_option(f)
    f = _revision_option(f)
    f = click.option(
        "--threads",
        type=click.IntRange(min=1),
        metavar="N",
        help="Threads for random values and casts [default: the CPUs this process may use].",
    )(f)
    f = _json_option("the plan and the result")(f)
    f = _click_option(CONFIG_SET)(f)
    f = click.option(
        "--overwrite",
        is_flag=True,
        help="Replace DEST if it is a checkpoint (never SRC or a folder that holds it).",
    )(f)
    f = click.option(
        "--max-shard-size",
        type=SizeType(),
        default="5GB",
        show_default=True,
        help="Largest shard of a directory DEST; KB/MB/GB are powers of 1000, KiB/MiB/GiB of 1024.",
    )(f)
    f = click.option(
        "--dry-run", is_flag=True, help="Check SRC and DEST, print the plan, write nothing."
    )(f)
    return f


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
        **values: Any,
    ) -> None:
        from .api import verb_recipe

        strip = values.pop("strip_prefix", ()) if takes_strip else ()
        values = {k: [list(p) for p in v] if k == "sub" else v for k, v in values.items()}
        values = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
        recipe = verb_recipe(operation.name, values, labels=flags)
        _run_and_report(
            recipe, src, dest, operation.name, strip, dry_run, max_shard_size, overwrite,
            as_json, threads, revision, config_set,
        )  # fmt: skip

    details = operation.details
    callback.__doc__ = operation.summary + (f"\n\n{details}" if details else "")
    command: Any = callback
    command = _write_options(command)
    if takes_strip:
        command = _click_option(STRIP_PREFIX)(command)
    for opt in reversed(operation.options):
        command = _click_option(opt)(command)
    command = click.argument("dest", type=click.Path())(command)
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
) -> None:  # fmt: skip
    """Run the steps of RECIPE (YAML or JSON) over SRC in one streaming pass; write DEST.

    A recipe is `steps:`, a list of `{op: NAME, ...}` whose keys are the verbs' long option
    names with '-' as '_' (patterns for -p, exclude for -x; lists for repeatable options;
    rename's sub is a list of [REGEX, REPL] pairs). Steps apply in order, each to the names and
    dtypes left by the steps before it.
    """
    from .recipe import Recipe

    _run_and_report(
        Recipe.load(recipe), src, dest, "apply", (), dry_run, max_shard_size, overwrite,
        as_json, threads, revision, config_set,
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
) -> None:
    """Every writing command: run its recipe with a progress bar, then render the result."""
    from .api import run

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
    from .inspection import inspect

    with _progress("inspect --stats") as bar:
        info = inspect(src, patterns, stats=stats, on_bytes=bar, revision=revision)
    for note in info.checkpoint.notes:
        warn(note)
    if as_json:
        emit_json(info.to_json())
        return
    ckpt = info.checkpoint
    kind = ckpt.format + (f", sharded in {len(ckpt.files)} files" if ckpt.sharded else "")
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
    from .verify import verify

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
    from .compare import diff

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


def _render_diff(result: Any, show_all: bool) -> None:
    from .patterns import group_of, natural_key

    for side, ckpt in (("a", result.a), ("b", result.b)):
        click.echo(f"{side}: {ckpt.path} ({ckpt.format}, {len(ckpt.tensors)} tensors)")
    for status, n in result.summary.items():
        click.echo(f"{status}: {n}")
    differing = result.differences()
    if not differing and not show_all:
        click.echo("no differences")
        return
    groups: dict[str, dict[str, int]] = {}
    for t in differing:
        counts = groups.setdefault(group_of(t.name), {})
        counts[t.status] = counts.get(t.status, 0) + 1
    if differing:
        click.echo("\nby layer or module:")
        rows = [
            [g, ", ".join(f"{n} {s}" for s, n in groups[g].items())]
            for g in sorted(groups, key=natural_key)
        ]
        click.echo(_table(rows, ["group", "tensors"]))
    shown = sorted(result.tensors if show_all else differing, key=lambda t: natural_key(t.name))
    nonfinite = any(t.nonfinite_mismatch for t in shown)
    rows = [
        [
            t.status,
            t.name,
            _pair(t.dtype_a, t.dtype_b),
            _pair(
                _shape(t.shape_a) if t.shape_a else None, _shape(t.shape_b) if t.shape_b else None
            ),
            _fmt(t.max_abs),
            _fmt(t.mean_abs),
            _fmt(t.rel_l2),
            _fmt(t.cosine),
            *([str(t.nonfinite_mismatch)] if nonfinite else []),
        ]
        for t in shown
    ]
    headers = ["status", "name", "dtype", "shape", "max_abs", "mean_abs", "rel_l2", "cosine"]
    if nonfinite:  # NaN or Inf on one side only: the metrics above leave those values out
        headers.append("nan/inf differing")
    click.echo()
    click.echo(_table(rows, headers))


def _pair(x: str | None, y: str | None) -> str:
    if x == y:
        return x or "-"
    return f"{x or '-'} -> {y or '-'}"


def _summary(plan: Any) -> str:
    from .ops import OPERATIONS

    if plan.operation == "convert":
        return f"{len(plan.tensors)} tensors converted"
    operation = OPERATIONS.get(plan.operation)
    action = operation.action if operation is not None else None
    if action is not None:
        changed = [t for t in plan.changed() if _action(plan, t) == action]
        params = sum(numel_of(t.shape) for t in changed)
        kept = len(plan.tensors) - (0 if action == "drop" else len(changed))
        text = f"{len(changed)} tensors {PAST_TENSE[action]} ({params:,} parameters), {kept} kept"
    else:
        counts = [f"{plan.count(a)} {PAST_TENSE[a]}" for a in PAST_TENSE if plan.count(a)]
        text = ", ".join([*counts, f"{plan.count('keep')} kept"])
    if plan.skipped:
        text += f", {len(plan.skipped)} skipped"
    if plan.seed is not None and plan.std is not None:
        text += f" [seed {plan.seed}, std {plan.std:g}]"
    return text


def _action(plan: Any, t: Any) -> str:
    return "drop" if t in plan.dropped else str(t.action)


def _report(result: Any, as_json: bool, *, dry_run: bool) -> None:
    plan = result.plan
    for w in plan.warnings:
        warn(w)
    for note in result.notes:
        warn(note)
    if as_json:
        emit_json(result.to_json())
        return
    changed = plan.changed()
    if dry_run and changed:
        rows = [
            [
                t.name,
                _action(plan, t),
                "-" if t in plan.dropped else t.describe(),
                t.dtype,
                _shape(t.shape),
            ]
            for t in changed
        ]
        click.echo(_table(rows, ["name", "action", "source", "dtype", "shape"]))
    elif changed:
        for action in PAST_TENSE:
            names = [t.name for t in changed if _action(plan, t) == action]
            if names:
                groups = group_names(names)
                click.echo(f"{action}: " + ", ".join(f"{g} ({n})" for g, n in groups.items()))
    for e in plan.config_edits:
        old = "(absent)" if e.old is None else json.dumps(e.old)
        click.echo(f"config.json: {e.key}: {old} -> {json.dumps(e.new)}")
    for s in plan.skipped:
        click.echo(f"skipped {s.name}: {s.reason}")
    summary = _summary(plan)
    if dry_run:
        click.echo(f"dry run: {summary}; nothing written")
        return
    w = result.written
    if not str(w.destination).endswith(".safetensors") and "config.json" not in w.copied:
        left_out = dict(plan.side_files.outside) if plan.side_files is not None else {}
        if "config.json" not in left_out:
            warn(
                f"no config.json was copied into {w.destination} (SRC has none beside its "
                "weights); add one before from_pretrained, which otherwise falls back to "
                "default sizes"
            )
    click.echo(f"{summary}")
    click.echo(f"wrote {w.destination} ({', '.join(w.files)}; {format_size(w.total_bytes)})")
    if w.copied:
        click.echo("copied " + ", ".join(w.copied))


def group_names(names: Sequence[str]) -> dict[str, int]:
    """Count tensor names per layer (``bert.encoder.layer.3``) or module, in first-seen order."""
    from .patterns import group_of

    groups: dict[str, int] = {}
    for name in names:
        key = group_of(name)
        groups[key] = groups.get(key, 0) + 1
    return groups


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
