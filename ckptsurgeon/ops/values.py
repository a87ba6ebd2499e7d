"""Option values as users write them: layer lists (``0,2,4-6`` or ``[0, 2, "4-6"]``) and
config.json assignments (``KEY=JSON``).

Below :mod:`.base`, which checks ``layers`` and ``mapping`` options with them, and the
operations that take them."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from ..errors import RecipeError, echo

_ITEM_RE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_layer_list(value: str | Sequence[int | str], label: str = "LIST") -> list[int]:
    """``"0,2,4-6"`` or ``[0, 2, "4-6"]`` -> ``[0, 2, 4, 5, 6]`` (inclusive ranges, order kept)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[int] = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            out.append(item)
            continue
        match = _ITEM_RE.match(item) if isinstance(item, str) else None
        if match is None:
            raise RecipeError(
                f"{label} item {item!r} is not an index or a range",
                str(value),
                "write indices and inclusive ranges: 0,2,4-6",
            )
        lo = int(match.group(1))
        hi = int(match.group(2)) if match.group(2) is not None else lo
        if hi < lo:
            raise RecipeError(
                f"{label} range {item!r} runs backwards", str(value), f"write {hi}-{lo}"
            )
        out.extend(range(lo, hi + 1))
    return out


def parse_assignments(items: Sequence[str], label: str = "--config-set") -> dict[str, Any]:
    """``["KEY=JSON", ...]`` -> ``{KEY: value}`` (a later KEY replaces an earlier one)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise RecipeError(
                f"{label} takes KEY=JSON, got {echo(item)}",
                label,
                "e.g. --config-set 'architectures=[\"BertModel\"]'",
            )
        try:
            out[key] = json.loads(text)
        except ValueError:
            raise RecipeError(
                f"{label} {key}: the value is not JSON ({echo(text)})",
                label,
                f"write strings in double quotes: --config-set '{key}=\"{text}\"'",
            ) from None
    return out
