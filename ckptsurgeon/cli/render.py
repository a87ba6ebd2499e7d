"""How the CLI shows results: tables, the plan and its summary, diffs, warnings and the
progress bar. Data on stdout, warnings on stderr."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import click

from ..dtypes import numel_of
from ..formats.sidefiles import NO_CONFIG_WARNING
from ..plan import PAST_TENSE
from ..sizes import format_size


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


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False))


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


def _render_diff(result: Any, show_all: bool) -> None:
    from ..patterns import group_of, natural_key

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
    from ..ops import OPERATIONS

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
        if "config.json" not in left_out and NO_CONFIG_WARNING not in plan.warnings:
            warn(
                f"no config.json was copied into {w.destination} (SRC has none beside its "
                "weights); add one before from_pretrained, which otherwise falls back to "
                "default sizes"
            )
    click.echo(f"{summary}")
    size = format_size(w.total_bytes)
    if result.cloned_bytes:  # blocks shared with the source: only the rest was written
        written = w.total_bytes - result.cloned_bytes
        size += f": cloned {format_size(result.cloned_bytes)}, wrote {format_size(written)}"
    click.echo(f"wrote {w.destination} ({', '.join(w.files)}; {size})")
    if w.copied:
        click.echo("copied " + ", ".join(w.copied))


def group_names(names: Sequence[str]) -> dict[str, int]:
    """Count tensor names per layer (``bert.encoder.layer.3``) or module, in first-seen order."""
    from ..patterns import group_of

    groups: dict[str, int] = {}
    for name in names:
        key = group_of(name)
        groups[key] = groups.get(key, 0) + 1
    return groups
