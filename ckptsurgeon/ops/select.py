"""Selecting among a plan's current names (stored tensors and folded tied aliases)."""

from __future__ import annotations

from collections.abc import Sequence

from ..plan import Plan
from ..plan.selection import resolve_selection


def select_names(
    plan: Plan,
    patterns: Sequence[str],
    exclude: Sequence[str] = (),
    *,
    top_layers: int | None = None,
    pooler: bool = False,
    stack: str | None = None,
) -> list[str]:
    """Names selected by the patterns (``--top-layers``, ``--pooler``) in plan order, aliases
    included; the same errors as every selection (no match, wrapped-model hint...)."""
    return resolve_selection(
        [*plan.names, *plan.aliases],
        patterns,
        exclude,
        top_layers=top_layers,
        pooler=pooler,
        config=plan.config,
        where=plan.source,
        stack=stack,
    )
