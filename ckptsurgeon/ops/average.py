"""``average``: several checkpoints in, their (weighted) mean out.

Every floating tensor becomes ``sum(w_i * x_i) / sum(w_i)``, accumulated in float64 in input
order and rounded once to its dtype (to nearest even, as torch's ``.to()``); integer and bool
tensors must be equal in every input and are copied. The inputs must hold the same names,
shapes and dtypes; the first difference is an error naming it and the inputs. Inputs are opened
here (headers only); the executor streams a chunk of each at a time.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..dtypes import CASTABLE
from ..errors import RecipeError, SelectionError
from ..formats.checkpoint import Checkpoint, open_checkpoint
from ..plan import Combine, Copy, Plan
from .base import Operation, Option


def describe_input(path: str, ckpt: Checkpoint) -> dict[str, Any]:
    """An input as the output's metadata records it: as given, and its files' total size and
    latest modification time (seconds), so that a release says what it was made from."""
    files = ckpt.own_files
    stats = [f.stat() for f in files]
    return {
        "path": path,
        "format": ckpt.format,
        "bytes": sum(st.st_size for st in stats),
        "mtime": max((int(st.st_mtime) for st in stats), default=0),
    }


def _first_difference(plan: Plan, other: Checkpoint, path: str) -> str | None:
    mine = {t.source.tensor: t for t in plan.tensors if isinstance(t.source, Copy)}
    theirs = {t.name: t for t in other.tensors if t.name not in other.aliases}
    for name in sorted(set(mine) ^ set(theirs)):
        where = path if name in mine else plan.source
        return f"tensor {name!r} is missing from {where}"
    for name, t in mine.items():
        o = theirs[name]
        if (t.native, t.shape) != (o.dtype, o.shape):
            return (
                f"tensor {name!r} is {t.native}{list(t.shape)} in {plan.source} but "
                f"{o.dtype}{list(o.shape)} in {path}"
            )
    return None


def plan_average(plan: Plan, **options: Any) -> Plan:
    others: list[str] = [str(p) for p in options.get("with") or []]
    if not others:
        raise RecipeError(
            "average needs at least two checkpoints", plan.source, "give the others in 'with'"
        )
    weights = options.get("weights") or [1.0] * (len(others) + 1)
    if len(weights) != len(others) + 1:
        raise RecipeError(
            f"{len(weights)} weights for {len(others) + 1} checkpoints",
            plan.source,
            "give one positive weight per SRC, in order",
        )
    changed = [t.name for t in plan.tensors if t.computed]
    if changed:
        raise RecipeError(
            f"average must come before steps that change values ({changed[0]!r} already did)",
            plan.source,
            "put the average step first in the recipe",
        )
    opened = [open_checkpoint(p) for p in others]
    for path, other in zip(others, opened, strict=True):
        problem = _first_difference(plan, other, path)
        if problem is not None:
            raise SelectionError(
                f"the checkpoints differ: {problem}",
                ", ".join([plan.source, *others]),
                "average checkpoints of one model: same tensor names, shapes and dtypes",
            )
    base = len(plan.inputs)
    out = []
    for t in plan.tensors:
        assert isinstance(t.source, Copy)
        name = t.source.tensor
        inputs = ((0, name), *((base + i + 1, name) for i in range(len(others))))
        kind = "mean" if t.native in CASTABLE else "equal"
        out.append(replace(t, source=Combine(kind, inputs, tuple(weights))))
    return replace(
        plan,
        tensors=tuple(out),
        inputs=(*plan.inputs, *others),
        input_records=(
            *plan.input_records,
            *(describe_input(p, c) for p, c in zip(others, opened, strict=True)),
        ),
    )


AVERAGE = Operation(
    "average",
    "Average checkpoints of one model: SRC SRC [SRC...] DEST; every floating tensor becomes "
    "their (weighted) mean.",
    (
        Option(
            "with",
            ("--with",),
            "strings",
            "The other checkpoints (recipes: the first input is SRC).",
            metavar="SRC",
        ),
        Option(
            "weights",
            ("--weights",),
            "weights",
            "One positive weight per SRC, in order, e.g. 3,1,1 [default: equal].",
            metavar="W,W,...",
            omit_unset=True,
        ),
    ),
    plan_average,
    details=(
        "sum(w_i * x_i) / sum(w_i), accumulated in float64 and rounded once to each tensor's "
        "dtype (to nearest even, as torch's .to()). Integer and bool tensors must be equal in "
        "every SRC and are copied. The inputs must have the same tensor names, shapes and "
        "dtypes; any SRC kind works, training checkpoints included. Side files come from the "
        "first SRC. Memory: a chunk of each input at a time."
    ),
    action="average",
    inputs="with",
)
