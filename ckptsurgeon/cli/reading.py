"""The reading commands: ``inspect``, ``verify``, ``diff``; they never write SRC."""

from __future__ import annotations

import click

from ..ops.base import EXCLUDE, PATTERNS
from ..sizes import format_size
from .group import main
from .options import (
    _click_option,
    _json_option,
    _quiet_option,
    _revision_option,
    _threads_option,
)
from .render import (
    _fmt,
    _progress,
    _quiet,
    _render_diff,
    _shape,
    _table,
    emit_json,
    warn,
)


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


@main.command("check")
@click.argument("src", type=click.Path())
@click.option(
    "--write-manifest",
    metavar="FILE",
    help="Write the sha256 and size of every file of SRC to FILE (JSON), from the same read.",
)
@click.option("--manifest", metavar="FILE", help="Check every file of SRC against a manifest FILE.")
@_threads_option("the value scan")
@_revision_option
@_json_option("every check")
@_quiet_option
@click.pass_context
def check_cmd(
    ctx: click.Context,
    src: str,
    write_manifest: str | None,
    manifest: str | None,
    threads: int | None,
    revision: str | None,
    as_json: bool,
) -> None:
    """Gate a release without torch: are SRC's files whole, consistent and finite?

    Checks: files (headers parse, data covered exactly, dtype x shape = bytes, a sharded index
    names exactly its shards and tensors, each once, with the right total_size, no stray weight
    file), values (NaN and Inf per floating tensor; a weight matrix that is all zero: warn),
    config.json against the tensors (vocab_size, layers, hidden_size, a tied head, dtype), and
    with --manifest every file's sha256 and size. Exit 0 when nothing fails, 1 when a check
    fails (one line each), 2 when it cannot run.
    """
    from ..tools.check import check

    with _progress("check") as bar:
        result = check(
            src,
            write_manifest=write_manifest,
            manifest=manifest,
            threads=threads,
            revision=revision,
            on_bytes=bar,
        )
    status = 0 if result.ok else 1
    ctx.obj["exit_code"] = status
    if as_json:
        emit_json(result.to_json())
    else:
        for f in result.findings:
            if f.status == "ok" and _quiet():
                continue
            click.echo(f"{f.status:<4}  {f.check}: {f.detail}")
        click.echo(f"{result.path}: {'all checks pass' if result.ok else 'FAILED'}")
    ctx.exit(status)
