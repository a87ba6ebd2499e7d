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

from .errors import CkptSurgeonError, RecipeError, echo
from .formats.checkpoint import Checkpoint
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
                    f"a step must be a mapping like {{op: drop, ...}}, got {echo(raw)}",
                    label,
                    "write each step as {op: NAME, key: value, ...}",
                )
            name = raw.get("op")
            if isinstance(name, str):
                name = name.replace("_", "-")  # resize_vocab and resize-vocab alike
            if name not in OPERATIONS:
                raise RecipeError(
                    f"unknown op {echo(name)}",
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
        obj = load_json(text, str(p)) if p.suffix == ".json" else load_yaml(text, str(p))
        return cls.parse(obj, f"recipe {p.name}")

    def to_json(self) -> list[dict[str, Any]]:
        return [s.to_json() for s in self.steps]


# Recipes are small: a recipe that expands (through YAML aliases) past these is refused before
# it is built, so nested aliases ("billion laughs") cost neither time nor memory.
MAX_RECIPE_NODES = 100_000
MAX_RECIPE_CHARS = 16 * 1024 * 1024


def load_yaml(text: str, where: str) -> Any:
    """YAML as a recipe needs it: safe tags only; a key repeated in one mapping is an error
    naming it and its lines (PyYAML keeps the last silently); numbers in exponent form
    (``1e-2``) are numbers, as in YAML 1.2 and JSON; aliases may not expand the recipe past
    :data:`MAX_RECIPE_NODES` nodes or :data:`MAX_RECIPE_CHARS` characters."""
    import yaml

    loader = _recipe_loader()(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node, where)
        return loader.construct_document(node)
    except _DuplicateKey as dup:
        raise RecipeError(*_duplicate_message(dup.key, dup.first, dup.second, where)) from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "syntax error"
        raise RecipeError(f"recipe is not valid YAML ({first})", where, "fix it") from None
    finally:
        loader.dispose()


def load_json(text: str, where: str) -> Any:
    """JSON with a key repeated in one object an error naming it and its lines."""
    import json.decoder
    import json.scanner

    def parse_object(s_and_end: tuple[str, int], *args: Any) -> tuple[dict[str, Any], int]:
        s, start = s_and_end
        pairs, end = json.decoder.JSONObject(  # type: ignore[attr-defined]
            s_and_end, *args[:2], None, list, *args[4:]
        )
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                first, second = _json_key_lines(s, start, end, key)
                raise RecipeError(*_duplicate_message(key, first, second, where))
            seen.add(key)
        return dict(pairs), end

    decoder = json.JSONDecoder()
    decoder.parse_object = parse_object  # type: ignore[attr-defined]
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    try:
        return decoder.decode(text)
    except ValueError as exc:
        if isinstance(exc, RecipeError):
            raise
        raise RecipeError(f"recipe is not valid JSON ({exc})", where, "fix it") from None


def _duplicate_message(key: Any, first: int, second: int, where: str) -> tuple[str, str, str]:
    lines = f"lines {first} and {second}" if first != second else f"line {first}"
    return (
        f"key {echo(key)} appears twice in one mapping ({lines}); only one can count",
        f"{where}, line {second}",
        "remove or rename one of them (YAML and JSON would silently keep the last)",
    )


def _json_key_lines(s: str, start: int, end: int, key: str) -> tuple[int, int]:
    """The lines of the first two occurrences of ``key`` as a key of the object whose text
    runs from ``start`` (just after its ``{``) to ``end``."""
    found: list[int] = []
    depth, i = 0, start
    while i < end and len(found) < 2:
        ch = s[i]
        if ch == '"':
            j = i + 1
            while s[j] != '"':
                j += 2 if s[j] == "\\" else 1
            rest = s[j + 1 : end].lstrip()
            if depth == 0 and rest.startswith(":") and json.loads(s[i : j + 1]) == key:
                found.append(s.count("\n", 0, i) + 1)
            i = j + 1
            continue
        depth += ch in "[{"
        depth -= ch in "]}"
        i += 1
    found += [found[-1] if found else 1] * (2 - len(found))
    return found[0], found[1]


def _check_expanded_size(root: Any, where: str) -> None:
    """Refuse a document whose aliases expand past the limits (counted without expanding)."""
    import yaml

    sizes: dict[int, tuple[int, int]] = {}

    def size(node: Any) -> tuple[int, int]:  # (nodes, characters), each node counted once
        done = sizes.get(id(node))
        if done is not None:
            return done
        sizes[id(node)] = (1, 0)  # a node reached again while it is being measured: a cycle
        if isinstance(node, yaml.ScalarNode):
            result = (1, len(node.value))
        else:
            children = (
                node.value
                if isinstance(node, yaml.SequenceNode)
                else [child for pair in node.value for child in pair]
            )
            parts = [size(child) for child in children]
            result = (1 + sum(n for n, _ in parts), sum(c for _, c in parts))
        sizes[id(node)] = result
        return result

    # iterative deepening is not needed: a recipe is shallow, and Python's recursion limit
    # (a RecursionError below) turns a pathologically deep one into the same error
    try:
        nodes, chars = size(root)
    except RecursionError:
        nodes, chars = MAX_RECIPE_NODES + 1, 0
    if nodes > MAX_RECIPE_NODES or chars > MAX_RECIPE_CHARS:
        raise RecipeError(
            f"recipe expands to more than {MAX_RECIPE_NODES:,} values or "
            f"{MAX_RECIPE_CHARS // 2**20} MiB of text (YAML aliases nested in aliases?)",
            where,
            "write the recipe out without nested aliases",
        )


def _recipe_loader() -> Any:
    """PyYAML's SafeLoader with duplicate keys refused and YAML 1.2 floats (built once)."""
    global _LOADER
    if _LOADER is not None:
        return _LOADER
    import re

    import yaml

    class RecipeLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            if isinstance(node, yaml.MappingNode):
                seen: dict[Any, int] = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(
                        key_node, yaml.ScalarNode
                    ):
                        continue
                    key = self.construct_object(key_node)
                    line = key_node.start_mark.line + 1
                    if key in seen:
                        raise _DuplicateKey(key, seen[key], line)
                    seen[key] = line
            return super().construct_mapping(node, deep)

    RecipeLoader.yaml_implicit_resolvers = {
        k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    RecipeLoader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
        list("-+0123456789."),
    )
    _LOADER = RecipeLoader
    return _LOADER


_LOADER: Any = None


class _DuplicateKey(Exception):
    """Raised inside PyYAML's constructor; turned into a :class:`RecipeError` naming the file."""

    def __init__(self, key: Any, first: int, second: int) -> None:
        self.key, self.first, self.second = key, first, second
        super().__init__(key)


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
