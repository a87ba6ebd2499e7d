"""``layers``: a shallower (or deeper) model from a block stack: keep, drop, reorder, repeat.

``--keep 0,2,4,7,9,11`` gives the new order (a repeat such as ``0-7,4-11`` copies those blocks
twice: depth up-scaling); ``--drop 6-11`` removes. Kept blocks are renumbered 0..k-1 and copied
byte for byte under their new names; everything outside the stack is unchanged. config.json's
layer count (``num_hidden_layers``, ``n_layer``, ``num_layers``, ``n_layers``; T5's decoder:
``num_decoder_layers``) and every per-layer list of the old length (``layer_types``...) follow.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from ..errors import SelectionError
from ..plan import Plan, PlannedTensor
from ..plan.selection import config_get, config_layer_key, resolve_stack
from .base import Operation, Option


def plan_layers(
    plan: Plan, keep: list[int] | None, drop: list[int] | None, stack: str | None
) -> Plan:
    if (keep is None) == (drop is None):
        raise SelectionError(
            "give exactly one of --keep LIST and --drop LIST", plan.source, "e.g. --keep 0,2,4"
        )
    names = [*plan.names, *plan.aliases]
    prefix, count = resolve_stack(names, plan.config, plan.source, stack)
    wanted = keep if keep is not None else drop or []
    bad = [i for i in wanted if not 0 <= i < count]
    if bad:
        raise SelectionError(
            f"layer {bad[0]} is out of range: {prefix} has layers 0-{count - 1}",
            plan.source,
            f"give indices from 0 to {count - 1}",
        )
    order = wanted if keep is not None else [i for i in range(count) if i not in set(wanted)]
    if not order:
        raise SelectionError(
            f"no layer of {prefix} would remain", plan.source, "keep at least one layer"
        )
    layer_re = re.compile(re.escape(prefix) + r"\.(\d+)\.(.*)$")
    by_layer: dict[int, list[PlannedTensor]] = {}
    out: list[PlannedTensor] = []
    stack_at = None
    for t in plan.tensors:
        m = layer_re.match(t.name)
        if m is None:
            out.append(t)
            continue
        if stack_at is None:
            stack_at = len(out)
        by_layer.setdefault(int(m.group(1)), []).append(t)
    rests = {i: {_rest(layer_re, t) for t in ts} for i, ts in by_layer.items()}
    shared = _shared_by_first_block(rests, count)
    _check_interchangeable(rests, shared, order, count, prefix, plan.source)
    block: list[PlannedTensor] = []
    for new, old in enumerate(order):
        for t in by_layer.get(old, []):
            rest = _rest(layer_re, t)
            if rest in shared and new != 0:
                continue  # owned by the first block only, used by every block
            block.append(_renamed(t, f"{prefix}.{new}.{rest}"))
        if new == 0 and old != 0:  # the new first block takes over what block 0 owned
            block.extend(
                _renamed(t, f"{prefix}.0.{rest}")
                for t in by_layer.get(0, [])
                if (rest := _rest(layer_re, t)) in shared
            )
    out[stack_at or 0 : stack_at or 0] = block
    aliases = {}
    for alias, canonical in plan.aliases.items():
        ma, mc = layer_re.match(alias), layer_re.match(canonical)
        if ma is None and mc is None:
            aliases[alias] = canonical
            continue
        for new, old in enumerate(order):  # a tied pair inside one block follows the block
            if ma is not None and mc is not None and int(ma.group(1)) == int(mc.group(1)) == old:
                aliases[f"{prefix}.{new}.{ma.group(2)}"] = f"{prefix}.{new}.{mc.group(2)}"
    removed = tuple(
        t
        for i, ts in sorted(by_layer.items())
        if i not in set(order)
        for t in ts
        if not (i == 0 and _rest(layer_re, t) in shared)
    )
    plan = replace(plan, tensors=tuple(out), aliases=aliases, dropped=(*plan.dropped, *removed))
    return plan.with_config(_config_edits(plan.config, prefix, count, order))


# Tensors that only the first block of a stack stores and every block uses: T5's (mT5's,
# LongT5's, Switch's) relative position bias lives in block 0 of each stack.
_SHARED_FIRST_RE = re.compile(r"relative_attention_bias\.weight$")  # LongT5: global_relative_...


def _rest(layer_re: re.Pattern[str], t: PlannedTensor) -> str:
    return layer_re.match(t.name).group(2)  # type: ignore[union-attr]


def _renamed(t: PlannedTensor, name: str) -> PlannedTensor:
    return replace(t, name=name, renamed_from=t.renamed_from or t.name) if name != t.name else t


def _shared_by_first_block(rests: dict[int, set[str]], count: int) -> set[str]:
    """The names (after ``PREFIX.0.``) that block 0 alone stores and every block shares."""
    if count < 2:
        return set()
    others = set().union(*(r for i, r in rests.items() if i != 0))
    return {r for r in rests.get(0, set()) - others if _SHARED_FIRST_RE.search(r)}


def _check_interchangeable(
    rests: dict[int, set[str]],
    shared: set[str],
    order: list[int],
    count: int,
    prefix: str,
    where: str,
) -> None:
    """Refuse an order that puts a block where the model builds a block of another shape.

    Blocks of most stacks are alike. Where they are not, what a block holds depends on its
    position (ModernBERT's layer 0 has no ``attn_norm``; DeepSeek's first dense layers;
    Qwen-MoE's sparse steps), so a block may only land where the source had a block with
    exactly the same tensors: the model would otherwise report missing or unexpected keys."""
    kinds = {i: frozenset(r - shared) for i, r in rests.items()}
    if len(set(kinds.values())) <= 1:
        return
    for new, old in enumerate(order):
        here = min(new, count - 1)
        if kinds[old] != kinds[here]:
            extra = sorted(kinds[old] - kinds[here]) or sorted(kinds[here] - kinds[old])
            has = "has" if kinds[old] - kinds[here] else "lacks"
            raise SelectionError(
                f"the blocks of {prefix} are not alike: block {old} {has} {extra[0]!r}, unlike "
                f"block {here} whose place it would take (new layer {new}), so the model "
                "would load with missing or unexpected weights",
                where,
                "keep every block at a position whose block has the same tensors "
                f"(e.g. keep {prefix}.0 first), or select tensors with -p patterns",
            )


def _config_edits(
    config: dict[str, Any] | None, prefix: str, count: int, order: list[int]
) -> dict[str, Any]:
    if config is None:
        return {}
    edits: dict[str, Any] = {}
    key = config_layer_key(config, prefix)
    if key is not None:
        edits[key] = len(order)
    if count >= 2:
        base = key.rsplit(".", 1)[0] + "." if key is not None and "." in key else ""
        section = config_get(config, base.rstrip(".")) if base else config
        for k, v in (section or {}).items():
            if isinstance(v, list) and len(v) == count and k != "architectures":
                edits[base + k] = [v[i] for i in order]
    return edits


LAYERS = Operation(
    "layers",
    "Keep, drop, reorder or repeat the blocks of a layer stack; config.json follows.",
    (
        Option(
            "keep",
            ("--keep",),
            "layers",
            "Blocks to keep, in the new order: 0,2,4-6 (repeats allowed).",
            metavar="LIST",
        ),
        Option("drop", ("--drop",), "layers", "Blocks to remove: 6-11.", metavar="LIST"),
        Option(
            "stack",
            ("--stack",),
            "str",
            "The stack to work on when there are several (e.g. decoder.block).",
            metavar="PREFIX",
        ),
    ),
    plan_layers,
    details=(
        "LIST is indices and inclusive ranges: 0,2,4,7,9,11 or 0-5. --keep gives the new order "
        "(repeats allowed: 0-7,4-11 copies blocks 4-7 twice); --drop removes. The stack is found "
        "as --top-layers finds it; --stack PREFIX chooses one when there are several. Kept blocks "
        "are renumbered 0..k-1 and copied byte for byte; config.json's layer count and per-layer "
        "lists follow."
    ),
)
