"""The command line: parse, call the library, render. Data on stdout, warnings on stderr.

Exit status: 0 success, 2 any error (usage, missing path, corrupt or unsafe file, existing
destination...), 1 reserved for ``diff`` finding differences.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import click

from . import __version__, interrupts
from .dtypes import numel_of
from .errors import CkptSurgeonError
from .sizes import format_size, parse_size

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
        except click.Abort:
            click.echo("Error: aborted; nothing was written", err=True)
            sys.exit(EXIT_ERROR)
        except (KeyboardInterrupt, interrupts.Terminated) as exc:
            _interrupted(exc)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CkptSurgeonError as exc:
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
            if _debug_enabled(ctx):
                traceback.print_exc()
            raise CommandError(
                f"unexpected {type(exc).__name__}: {exc}: rerun with --debug and report it"
            ) from None


def _interrupted(exc: BaseException) -> None:
    what = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"terminated by {exc}"
    try:
        click.echo(f"Error: {what}; nothing was written", err=True)
    finally:
        sys.exit(interrupts.exit_status(exc))


def warn(message: str) -> None:
    click.echo(f"Warning: {message}", err=True)


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
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Offline surgery on transformer checkpoints: inspect, convert, drop, reinit, diff.

    SRC is a model directory (safetensors first, then pytorch_model.bin, sharded or not) or a
    single .safetensors, .index.json, .bin, .pt or .pth file. Patterns are globs over full tensor
    names (case-sensitive, '*' crosses dots) with brace expansion: 'bert.encoder.layer.{9..11}.*'.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _patterns_option(f: Any) -> Any:
    return click.option(
        "-p",
        "--pattern",
        "patterns",
        multiple=True,
        metavar="PATTERN",
        help="Glob over full tensor names, brace expansion allowed; repeat for a union.",
    )(f)


def _exclude_option(f: Any) -> Any:
    return click.option(
        "-x",
        "--exclude",
        multiple=True,
        metavar="PATTERN",
        help="Glob of tensors to leave out of the selection; repeatable.",
    )(f)


def _write_options(f: Any) -> Any:
    f = click.option(
        "--strip-prefix",
        multiple=True,
        metavar="P",
        help="Remove prefix P (e.g. 'module.' of DDP, '_orig_mod.' of torch.compile) from "
        "names before selecting and writing; repeatable.",
    )(f)
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
    return f


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


@main.command("inspect")
@click.argument("src", type=click.Path())
@_patterns_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option(
    "--stats", is_flag=True, help="Add mean, std, min, max, NaN and Inf counts (reads the data)."
)
def inspect_cmd(src: str, patterns: tuple[str, ...], as_json: bool, stats: bool) -> None:
    """Show what is inside SRC: format, files, tensors, parameters, metadata."""
    from .inspection import inspect

    progress = (
        (lambda name: click.echo(f"reading {name}", err=True))
        if stats and not as_json and sys.stderr.isatty()
        else None
    )
    info = inspect(src, patterns, stats=stats, progress=progress)
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


@main.command("convert")
@click.argument("src", type=click.Path())
@click.argument("dest", type=click.Path())
@click.option("--dry-run", is_flag=True, help="Check SRC and DEST, print the plan, write nothing.")
@_write_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def convert_cmd(
    src: str,
    dest: str,
    dry_run: bool,
    max_shard_size: int,
    overwrite: bool,
    strip_prefix: tuple[str, ...],
    as_json: bool,
) -> None:
    """Rewrite SRC as safetensors at DEST with every value unchanged.

    DEST ending in .safetensors is written as that single file; otherwise DEST is a model
    directory (sharded past --max-shard-size) with SRC's other files copied beside the weights.
    """
    from .surgery import convert

    result = convert(
        src,
        dest,
        dry_run=dry_run,
        max_shard_size=max_shard_size,
        overwrite=overwrite,
        strip_prefix=strip_prefix,
    )
    _report(result, as_json, dry_run=dry_run)


@main.command("reinit")
@click.argument("src", type=click.Path())
@click.argument("dest", type=click.Path())
@_patterns_option
@click.option(
    "--top-layers",
    type=click.IntRange(min=1),
    metavar="N",
    help="Select the N highest-numbered encoder layers.",
)
@click.option("--pooler", is_flag=True, help="Select the pooler (*pooler.dense.*).")
@_exclude_option
@click.option(
    "--seed",
    type=click.IntRange(0, 2**63 - 1),
    default=0,
    show_default=True,
    help="Seed; each tensor's values depend only on (seed, tensor name).",
)
@click.option(
    "--std",
    type=click.FloatRange(min=0, min_open=True),
    help="Std of normal draws [default: config initializer_range, else 0.02].",
)
@click.option("--dry-run", is_flag=True, help="Print the plan and write nothing.")
@_write_options
@click.option("--json", "as_json", is_flag=True, help="Print the plan/result as JSON.")
def reinit_cmd(
    src: str,
    dest: str,
    patterns: tuple[str, ...],
    top_layers: int | None,
    pooler: bool,
    exclude: tuple[str, ...],
    seed: int,
    std: float | None,
    dry_run: bool,
    max_shard_size: int,
    overwrite: bool,
    strip_prefix: tuple[str, ...],
    as_json: bool,
) -> None:
    """Re-initialise selected tensors of SRC with BERT's rules; write DEST.

    Rules: LayerNorm weight 1, bias 0; every other bias 0; embeddings N(0, std) with the
    padding row zeroed; every other floating weight of rank >= 2 N(0, std). Integer buffers are
    skipped. Unselected tensors are copied bit for bit.
    """
    from .surgery import reinit

    result = reinit(
        src,
        dest,
        patterns,
        exclude,
        top_layers=top_layers,
        pooler=pooler,
        seed=seed,
        std=std,
        dry_run=dry_run,
        max_shard_size=max_shard_size,
        overwrite=overwrite,
        strip_prefix=strip_prefix,
    )
    _report(result, as_json, dry_run=dry_run)


@main.command("drop")
@click.argument("src", type=click.Path())
@click.argument("dest", type=click.Path())
@_patterns_option
@_exclude_option
@click.option("--dry-run", is_flag=True, help="Print the plan and write nothing.")
@_write_options
@click.option("--json", "as_json", is_flag=True, help="Print the plan/result as JSON.")
def drop_cmd(
    src: str,
    dest: str,
    patterns: tuple[str, ...],
    exclude: tuple[str, ...],
    dry_run: bool,
    max_shard_size: int,
    overwrite: bool,
    strip_prefix: tuple[str, ...],
    as_json: bool,
) -> None:
    """Write SRC without the selected tensors, so from_pretrained initialises them itself."""
    from .surgery import drop

    result = drop(
        src,
        dest,
        patterns,
        exclude,
        dry_run=dry_run,
        max_shard_size=max_shard_size,
        overwrite=overwrite,
        strip_prefix=strip_prefix,
    )
    _report(result, as_json, dry_run=dry_run)


@main.command("diff")
@click.argument("a", type=click.Path())
@click.argument("b", type=click.Path())
@_patterns_option
@_exclude_option
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
@click.option("--all", "show_all", is_flag=True, help="List every tensor, identical ones too.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
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
    show_all: bool,
    as_json: bool,
) -> None:
    """Compare checkpoints A and B tensor by tensor.

    Statuses: identical, close (within --atol/--rtol), changed, dtype_mismatch, shape_mismatch,
    only_in_a, only_in_b (same_header with --names-only). Exit 0 when nothing differs beyond
    tolerance, 1 when something does, 2 on error.
    """
    from .diff import diff

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
    )
    status = 0 if result.identical else 1
    ctx.obj["exit_code"] = status  # kept when the reader closes the pipe early
    if as_json:
        emit_json(result.to_json(include_all=show_all))
    else:
        _render_diff(result, show_all)
    ctx.exit(status)


def _render_diff(result: Any, show_all: bool) -> None:
    from .patterns import group_of

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
            [g, ", ".join(f"{n} {s}" for s, n in counts.items())] for g, counts in groups.items()
        ]
        click.echo(_table(rows, ["group", "tensors"]))
    shown = result.tensors if show_all else differing
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
        ]
        for t in shown
    ]
    click.echo()
    click.echo(
        _table(
            rows, ["status", "name", "dtype", "shape", "max_abs", "mean_abs", "rel_l2", "cosine"]
        )
    )


def _pair(x: str | None, y: str | None) -> str:
    if x == y:
        return x or "-"
    return f"{x or '-'} -> {y or '-'}"


def _report(result: Any, as_json: bool, *, dry_run: bool) -> None:
    plan = result.plan
    for w in plan.warnings:
        warn(w)
    if as_json:
        emit_json(result.to_json())
        return
    changed = plan.changed()
    if dry_run and changed:
        rows = [[t.name, t.action, t.rule or "-", t.dtype, _shape(t.shape)] for t in changed]
        click.echo(_table(rows, ["name", "action", "rule", "dtype", "shape"]))
    elif changed:
        groups = group_names([t.name for t in changed])
        click.echo(f"{plan.operation}: " + ", ".join(f"{g} ({n})" for g, n in groups.items()))
    for s in plan.skipped:
        click.echo(f"skipped {s.name}: {s.reason}")
    params = sum(numel_of(t.shape) for t in changed)
    verb = {"reinit": "re-initialised", "drop": "dropped", "convert": "converted"}[plan.operation]
    if plan.operation == "convert":
        summary = f"{len(plan.tensors)} tensors converted"
    else:
        summary = (
            f"{len(changed)} tensors {verb} ({params:,} parameters), {plan.count('keep')} kept"
        )
    if plan.skipped:
        summary += f", {len(plan.skipped)} skipped"
    if plan.seed is not None and plan.operation == "reinit":
        summary += f" [seed {plan.seed}, std {plan.std:g}]"
    if dry_run:
        click.echo(f"dry run: {summary}; nothing written")
        return
    w = result.written
    if not str(w.destination).endswith(".safetensors") and "config.json" not in w.copied:
        warn(
            f"no config.json was copied into {w.destination} (SRC has none beside its weights); "
            "add one before from_pretrained, which otherwise falls back to default sizes"
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


if __name__ == "__main__":  # pragma: no cover
    main()
