"""Layer lists as users write them: ``0,2,4-6`` or ``[0, 2, "4-6"]``.

Below both :mod:`.base` (which checks ``layers`` options with it) and :mod:`.layers`."""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..errors import RecipeError

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
