"""Recipes: several operations composed into one plan, executed in one streaming pass.

A recipe is a YAML (or JSON) file::

    steps:
      - {op: rename, strip_prefix: ["module."]}
      - {op: drop, patterns: ["cls.*"]}
      - {op: reinit, top_layers: 3, pooler: true, seed: 0}
      - {op: cast, dtype: bf16}

Keys are the verbs' long option names with ``-`` as ``_`` (``patterns`` for ``-p``, ``exclude``
for ``-x``); a repeatable option is a list; ``rename``'s ``sub`` is a list of ``[REGEX, REPL]``
pairs. Steps apply in order, each to the names and dtypes the steps before it left. Every
mistake (unknown op or key, wrong type, a pattern that matches nothing at its step) is an error
naming the step, before anything is written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .checkpoint import Checkpoint
from .errors import CkptSurgeonError, RecipeError
from .ops import OPERATIONS
from .plan import Plan, initial_plan


@dataclass(frozen=True)
class Step:
    """One operation with every option checked and defaulted."""

    op: str
    options: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, **self.options}


@dataclass(frozen=True)
class Recipe:
    """A typed, validated list of steps. Build one with :meth:`parse` or :meth:`load`."""

    steps: tuple[Step, ...]

    @classmethod
    def parse(cls, obj: Any, where: str = "recipe") -> Recipe:
        """From ``{"steps": [...]}`` or a bare list of steps (``{op: NAME, key: value...}``)."""
        if isinstance(obj, Mapping):
            extra = sorted(set(obj) - {"steps"})
            if extra:
                raise RecipeError(
                    f"unknown top-level key {extra[0]!r}",
                    where,
                    "a recipe has 'steps:'",
                )
            obj = obj.get("steps")
        if not isinstance(obj, Sequence) or isinstance(obj, str | bytes) or not obj:
            raise RecipeError(
                "'steps' must be a non-empty list of steps",
                where,
                "write steps: [{op: drop, patterns: ['cls.*']}, ...]",
            )
        steps = []
        for i, raw in enumerate(obj, 1):
            label = f"recipe step {i}"
            if not isinstance(raw, Mapping):
                raise RecipeError(
                    f"a step must be a mapping like {{op: drop, ...}}, got {raw!r}",
                    label,
                    "write each step as {op: NAME, key: value, ...}",
                )
            name = raw.get("op")
            if isinstance(name, str):
                name = name.replace("_", "-")  # resize_vocab and resize-vocab alike
            if name not in OPERATIONS:
                raise RecipeError(
                    f"unknown op {name!r}",
                    label,
                    "ops are: " + ", ".join(sorted(OPERATIONS)),
                )
            values = {k: v for k, v in raw.items() if k != "op"}
            operation = OPERATIONS[str(name)]
            steps.append(Step(operation.name, operation.normalise(values, f"{label} ({name})")))
        return cls(tuple(steps))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Recipe:
        """Read a recipe file: YAML, or JSON (which YAML also reads)."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RecipeError(
                f"cannot read the recipe ({getattr(exc, 'strerror', None) or exc})",
                str(p),
                "give a YAML or JSON recipe file",
            ) from None
        if p.suffix == ".json":
            try:
                obj = json.loads(text)
            except ValueError as exc:
                raise RecipeError(f"recipe is not valid JSON ({exc})", str(p), "fix it") from None
        else:
            import yaml

            try:
                obj = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                first = str(exc).splitlines()[0] if str(exc) else "syntax error"
                raise RecipeError(f"recipe is not valid YAML ({first})", str(p), "fix it") from None
        return cls.parse(obj, f"recipe {p.name}")

    def to_json(self) -> list[dict[str, Any]]:
        return [s.to_json() for s in self.steps]


def plan_recipe(recipe: Recipe, ckpt: Checkpoint, *, label_steps: bool = True) -> Plan:
    """Compose the steps' plan functions over the checkpoint's initial plan (headers only).

    An error inside a step is re-raised naming the step (``label_steps``)."""
    plan = initial_plan(ckpt)
    for i, step in enumerate(recipe.steps, 1):
        try:
            plan = OPERATIONS[step.op].apply(plan, **step.options)
        except CkptSurgeonError as exc:
            if not label_steps:
                raise
            raise type(exc)(
                f"recipe step {i} ({step.op}): {exc.what}", exc.where, exc.hint
            ) from None
    return replace(plan, steps=tuple(s.to_json() for s in recipe.steps))
