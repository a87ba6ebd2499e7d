"""Plans and their execution: ``convert``, ``drop`` and ``reinit``.

Data flows one way: open a checkpoint (headers only) -> select names -> a pure, printable
:class:`Plan` (what ``--dry-run`` shows) -> :func:`execute` streams bytes into the writer ->
the writer verifies and publishes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import __version__
from .checkpoint import (
    Checkpoint,
    TensorInfo,
    normalise_prefixes,
    open_checkpoint,
    strip_prefixes,
    write_all,
)
from .errors import SelectionError
from .init_rules import Rule, Skip, generate, rule_for, std_from
from .patterns import as_patterns
from .pipeline import background
from .selection import resolve_selection
from .sidefiles import SideFiles, plan_side_files
from .sizes import parse_size
from .ties import name_ties
from .writer import (
    DEFAULT_MAX_SHARD_SIZE,
    OutTensor,
    WriteResult,
    check_destination,
    emission_order,
    is_single_file,
    write_checkpoint,
)


@dataclass(frozen=True)
class TensorPlan:
    """What happens to one tensor: ``keep``, ``drop`` or ``reinit`` (with its rule)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    action: str
    rule: str | None = None
    values_from: str | None = None  # reinit: the name whose random stream is used (tied alias)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "action": self.action,
            "rule": self.rule,
            "dtype": self.dtype,
            "shape": list(self.shape),
        }


@dataclass(frozen=True)
class Skipped:
    name: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "reason": self.reason}


@dataclass(frozen=True)
class Plan:
    """A complete, printable description of an operation; nothing has been written yet."""

    operation: str
    source: str
    destination: str
    tensors: tuple[TensorPlan, ...]
    skipped: tuple[Skipped, ...] = ()
    seed: int | None = None
    std: float | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)  # folded tied aliases -> canonical
    warnings: tuple[str, ...] = ()
    side_files: SideFiles | None = field(default=None, repr=False, compare=False)
    _rules: dict[str, Rule] = field(default_factory=dict, repr=False, compare=False)

    def count(self, action: str) -> int:
        return sum(1 for t in self.tensors if t.action == action)

    def changed(self) -> list[TensorPlan]:
        return [t for t in self.tensors if t.action != "keep"]

    def written(self) -> list[TensorPlan]:
        return [t for t in self.tensors if t.action != "drop"]

    def to_json(self, *, include_kept: bool = False) -> dict[str, Any]:
        shown = self.tensors if include_kept else tuple(self.changed())
        return {
            "operation": self.operation,
            "source": self.source,
            "destination": self.destination,
            "seed": self.seed,
            "std": self.std,
            "tensors": [t.to_json() for t in shown],
            "kept": self.count("keep"),
            "dropped": self.count("drop"),
            "reinitialized": self.count("reinit"),
            "skipped": [s.to_json() for s in self.skipped],
            "tied_aliases": dict(self.aliases),
            "warnings": list(self.warnings),
        }

    def metadata(self) -> dict[str, str]:
        """The ``__metadata__`` entries recording this operation (strings only)."""
        record = {
            "tool": "ckptsurgeon",
            "version": __version__,
            "operation": self.operation,
            "arguments": self.arguments,
        }
        if self.aliases:
            record["tied_aliases_dropped"] = dict(sorted(self.aliases.items()))
        return {"ckptsurgeon": json.dumps(record, sort_keys=True, separators=(",", ":"))}


@dataclass(frozen=True)
class Result:
    """What an operation did: its plan and what was written."""

    plan: Plan
    written: WriteResult | None  # None for a dry run

    def to_json(self) -> dict[str, Any]:
        out = self.plan.to_json()
        if self.written is not None:
            out["files"] = list(self.written.files)
            out["copied"] = list(self.written.copied)
            out["total_bytes"] = self.written.total_bytes
        out["dry_run"] = self.written is None
        return out


def _base_tensors(ckpt: Checkpoint) -> tuple[list[TensorInfo], list[Skipped]]:
    """The source's tensors minus folded tied aliases (which share storage with a canonical)."""
    kept = [t for t in ckpt.tensors if t.name not in ckpt.aliases]
    skipped = [
        Skipped(alias, f"tied alias of {canonical}; stored once under the canonical name")
        for alias, canonical in ckpt.aliases.items()
    ]
    return kept, skipped


def _keep(t: TensorInfo) -> TensorPlan:
    return TensorPlan(t.name, t.dtype, t.shape, t.nbytes, "keep")


def plan_convert(ckpt: Checkpoint, destination: str = "") -> Plan:
    base, skipped = _base_tensors(ckpt)
    warnings = list(ckpt.notes)
    if ckpt.wrapper_hint():
        warnings.append(
            f"{ckpt.wrapper_hint()} (transformers does not strip it, so from_pretrained "
            "would load none of these tensors)"
        )
    return Plan(
        operation="convert",
        source=str(ckpt.path),
        destination=destination,
        tensors=tuple(_keep(t) for t in base),
        skipped=tuple(skipped),
        aliases=dict(ckpt.aliases),
        warnings=tuple(warnings),
    )


def plan_drop(
    ckpt: Checkpoint,
    patterns: Sequence[str],
    exclude: Sequence[str] = (),
    destination: str = "",
) -> Plan:
    """Drop the selected tensors so that ``from_pretrained`` initialises them itself."""
    patterns, exclude = as_patterns(patterns), as_patterns(exclude)
    if not patterns:
        raise SelectionError("nothing selected", str(ckpt.path), "give at least one -p PATTERN")
    selected = set(
        resolve_selection(
            ckpt.names,
            patterns,
            exclude,
            top_layers=None,
            pooler=False,
            config=ckpt.config,
            where=str(ckpt.path),
        )
    )
    base, skipped = _base_tensors(ckpt)
    warnings = list(ckpt.notes)
    for alias in sorted(selected & set(ckpt.aliases)):
        warnings.append(
            f"{alias} is a tied alias of {ckpt.aliases[alias]} and is not stored separately; "
            "nothing to drop for it"
        )
    present = {t.name for t in base}
    for alias, canonical in name_ties([t.name for t in base], ckpt.config).items():
        if canonical in selected and alias not in selected and alias in present:
            raise SelectionError(
                f"dropping {canonical} while its tied alias {alias} stays would leave the "
                "alias without its canonical tensor (transformers 4 then leaves it "
                "uninitialised)",
                canonical,
                f"drop both (add -p '{alias}') or neither",
            )
    tensors = tuple(
        TensorPlan(t.name, t.dtype, t.shape, t.nbytes, "drop") if t.name in selected else _keep(t)
        for t in base
    )
    if not any(t.action == "keep" for t in tensors):
        raise SelectionError(
            f"the selection drops all {len(tensors)} tensors; the output would hold none",
            str(ckpt.path),
            "narrow -p, or add -x for what to keep",
        )
    return Plan(
        operation="drop",
        source=str(ckpt.path),
        destination=destination,
        tensors=tensors,
        skipped=tuple(skipped),
        arguments={"patterns": list(patterns), "exclude": list(exclude)},
        aliases=dict(ckpt.aliases),
        warnings=tuple(warnings),
    )


def plan_reinit(
    ckpt: Checkpoint,
    patterns: Sequence[str] = (),
    exclude: Sequence[str] = (),
    *,
    top_layers: int | None = None,
    pooler: bool = False,
    seed: int = 0,
    std: float | None = None,
    destination: str = "",
) -> Plan:
    """Re-initialise the selected tensors with BERT's rules (see :mod:`ckptsurgeon.init_rules`)."""
    patterns, exclude = as_patterns(patterns), as_patterns(exclude)
    if seed < 0 or seed >= 2**63:
        raise SelectionError(f"seed {seed} is out of range", "--seed", "give 0 <= seed < 2**63")
    if std is not None and not std > 0:
        raise SelectionError(f"std {std} is not positive", "--std", "give a positive std")
    if std is not None and not math.isfinite(std):
        raise SelectionError(f"std {std} is not finite", "--std", "give a finite positive std")
    where = str(ckpt.path)
    selected = resolve_selection(
        ckpt.names,
        patterns,
        exclude,
        top_layers=top_layers,
        pooler=pooler,
        config=ckpt.config,
        where=where,
    )
    the_std = std_from(ckpt.config, std)
    base, skipped = _base_tensors(ckpt)
    warnings = list(ckpt.notes)
    chosen = set(selected)
    # Selecting only a folded alias re-initialises its canonical tensor.
    for alias in [n for n in selected if n in ckpt.aliases]:
        canonical = ckpt.aliases[alias]
        chosen.discard(alias)
        if canonical not in chosen:
            warnings.append(
                f"{alias} is tied to {canonical}; re-initialising {canonical} (and so both)"
            )
            chosen.add(canonical)
    # Tied pairs stored separately: the alias follows its canonical tensor, value for value.
    ties = name_ties([t.name for t in base], ckpt.config)
    values_from: dict[str, str] = {}
    for alias, canonical in ties.items():
        if alias in chosen and canonical not in chosen:
            warnings.append(f"{alias} is tied to {canonical}; re-initialising {canonical} too")
            chosen.add(canonical)
        if canonical in chosen:
            chosen.add(alias)
            values_from[alias] = canonical
    by_name = {t.name: t for t in base}
    rules: dict[str, Rule] = {}
    plans: list[TensorPlan] = []
    for t in base:
        if t.name not in chosen:
            plans.append(_keep(t))
            continue
        source = by_name.get(values_from.get(t.name, t.name), t)
        if source.shape != t.shape:
            source = t
        try:
            rule = rule_for(source.name, t.dtype, t.shape, ckpt.config, the_std)
        except Skip as why:
            skipped.append(Skipped(t.name, str(why)))
            plans.append(_keep(t))
            continue
        rules[t.name] = rule
        plans.append(
            TensorPlan(
                t.name,
                t.dtype,
                t.shape,
                t.nbytes,
                "reinit",
                rule.describe(),
                source.name if source.name != t.name else None,
            )
        )
    if not rules:
        reasons = "; ".join(f"{s.name}: {s.reason}" for s in skipped[-3:] if s.name in chosen)
        raise SelectionError(
            "nothing to re-initialise: every selected tensor is skipped"
            + (f" ({reasons})" if reasons else ""),
            where,
            "select floating-point weights, biases or LayerNorm parameters",
        )
    arguments: dict[str, Any] = {
        "patterns": list(patterns),
        "exclude": list(exclude),
        "top_layers": top_layers,
        "pooler": pooler,
        "seed": seed,
        "std": the_std,
    }
    return Plan(
        operation="reinit",
        source=where,
        destination=destination,
        tensors=tuple(plans),
        skipped=tuple(skipped),
        seed=seed,
        std=the_std,
        arguments=arguments,
        aliases=dict(ckpt.aliases),
        warnings=tuple(warnings),
        _rules=rules,
    )


def execute(
    plan: Plan,
    ckpt: Checkpoint,
    destination: str | os.PathLike[str],
    *,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
    threads: int | None = None,
) -> WriteResult:
    """Carry out a plan: stream kept bytes, generate re-initialised ones, write, verify."""
    written = plan.written()
    by_name = {t.name: t for t in ckpt.tensors}
    actions = {t.name: t for t in written}
    out = [OutTensor(t.name, t.dtype, t.shape, t.nbytes) for t in written]
    seed = plan.seed or 0

    # Re-initialised bytes are drawn by a thread, in the order the writer will ask for them and
    # a bounded number of chunks ahead, so random numbers (and numpy's ~0.1 s import) happen
    # while the kernel copies the kept tensors. Values do not depend on this: each chunk has
    # its own stream.
    order = emission_order(out, destination, max_shard_size)
    todo = [t for t in order if actions[t.name].action == "reinit"]

    def drawn() -> Iterator[tuple[str, bytes | memoryview]]:
        for t in todo:
            step = actions[t.name]
            stream = step.values_from or t.name
            for chunk in generate(stream, t.dtype, t.shape, plan._rules[t.name], seed, threads):
                yield t.name, chunk

    ahead: Iterator[tuple[str, bytes | memoryview]] = (
        background(drawn(), depth=16) if todo else iter(())
    )
    with ckpt.reader() as reader:

        def emit(t: OutTensor, fd: int) -> None:
            if actions[t.name].action == "keep":
                reader.copy_to(by_name[t.name], fd)
                return
            remaining = t.nbytes
            while remaining:
                name, chunk = next(ahead)
                if name != t.name:  # pragma: no cover - emission_order and the writer disagree
                    raise RuntimeError(f"writer asked for {t.name!r}, drew {name!r}")
                write_all(fd, chunk)
                remaining -= len(chunk) if isinstance(chunk, bytes) else chunk.nbytes

        try:
            return write_checkpoint(
                ckpt,
                destination,
                out,
                emit,
                plan.metadata(),
                max_shard_size=max_shard_size,
                overwrite=overwrite,
                side_files=plan.side_files,
            )
        finally:
            close = getattr(ahead, "close", None)
            if close is not None:
                close()


# ---------------------------------------------------------------------------------------------
# The public verbs


def _open(
    src: str | os.PathLike[str], strip_prefix: str | Sequence[str]
) -> tuple[Checkpoint, list[str]]:
    """Open SRC for a command that writes (a broken config.json is an error here); return it
    with the wrapper prefixes stripped, and those prefixes as applied."""
    ckpt = open_checkpoint(src)
    prefixes = normalise_prefixes(ckpt, strip_prefix)
    ckpt = strip_prefixes(ckpt, prefixes)
    ckpt.require_valid_config()
    return ckpt, prefixes


def _run(
    plan: Plan,
    ckpt: Checkpoint,
    dest: str | os.PathLike[str],
    strip_prefix: list[str],
    *,
    dry_run: bool,
    max_shard_size: int | str,
    overwrite: bool,
    threads: int | None = None,
) -> Result:
    """Check DEST (a dry run too, so that a dry run that passes means the real run can start),
    plan the files copied beside the weights, then execute unless this is a dry run."""
    if strip_prefix:  # recorded in the plan's arguments, and so in the output metadata
        plan = replace(plan, arguments={**plan.arguments, "strip_prefix": strip_prefix})
    shard_size = parse_size(max_shard_size) if isinstance(max_shard_size, str) else max_shard_size
    check_destination(ckpt, Path(dest), overwrite)
    if not is_single_file(dest):
        side = plan_side_files(ckpt.root, ckpt.own_files)
        plan = replace(plan, side_files=side, warnings=(*plan.warnings, *side.notes))
    if dry_run:
        return Result(plan, None)
    written = execute(
        plan, ckpt, dest, max_shard_size=shard_size, overwrite=overwrite, threads=threads
    )
    return Result(plan, written)


def convert(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
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
    ckpt, strip = _open(src, strip_prefix)
    plan = plan_convert(ckpt, str(dest))
    return _run(
        plan,
        ckpt,
        dest,
        strip,
        dry_run=dry_run,
        max_shard_size=max_shard_size,
        overwrite=overwrite,
    )


def drop(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
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
    ckpt, strip = _open(src, strip_prefix)
    plan = plan_drop(ckpt, patterns, exclude, destination=str(dest))
    return _run(
        plan,
        ckpt,
        dest,
        strip,
        dry_run=dry_run,
        max_shard_size=max_shard_size,
        overwrite=overwrite,
    )


def reinit(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    patterns: str | Sequence[str] = (),
    exclude: str | Sequence[str] = (),
    *,
    top_layers: int | None = None,
    pooler: bool = False,
    seed: int = 0,
    std: float | None = None,
    dry_run: bool = False,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
    threads: int | None = None,
    strip_prefix: str | Sequence[str] = (),
) -> Result:
    """Re-initialise the selected tensors with BERT's rules and write a new checkpoint.

    Values depend on (seed, output tensor name) only.

    >>> reinit("bert/", "bert-top3/", top_layers=3, pooler=True, seed=0)  # doctest: +SKIP
    """
    ckpt, strip = _open(src, strip_prefix)
    plan = plan_reinit(
        ckpt,
        patterns,
        exclude,
        top_layers=top_layers,
        pooler=pooler,
        seed=seed,
        std=std,
        destination=str(dest),
    )
    return _run(
        plan,
        ckpt,
        dest,
        strip,
        dry_run=dry_run,
        max_shard_size=max_shard_size,
        overwrite=overwrite,
        threads=threads,
    )
