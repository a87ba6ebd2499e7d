"""Selecting tensors for surgery: glob patterns, ``--top-layers``, ``--pooler``, tied groups."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ..errors import PatternError, SelectionError
from ..formats.config_json import LAYER_COUNT_KEYS, is_int
from ..formats.prefixes import WRAPPER_PREFIXES, wrapper_hint
from ..patterns import as_patterns, select

# Numbered block stacks, with up to two components of prefix: BERT-family
# ``bert.encoder.layer.N``, DeBERTa ``deberta.encoder.layer.N``, DistilBERT
# ``distilbert.transformer.layer.N``, Llama/ModernBERT ``model.layers.N``, GPT-2/GPT-J/BLOOM
# ``transformer.h.N``, OPT ``model.decoder.layers.N``, T5 ``encoder.block.N`` and
# ``decoder.block.N``, CLIP ``text_model.encoder.layers.N`` and ``vision_model.encoder.layers.N``.
_STACK_RE = re.compile(
    r"^((?:[A-Za-z_][A-Za-z0-9_]*\.){0,2}?(?:(?:encoder|transformer)\.layers?|layers|h|block))"
    r"\.(\d+)\."
)
POOLER_PATTERN = "*pooler.dense.*"


def find_layer_stacks(names: Sequence[str]) -> dict[str, list[int]]:
    """``{"bert.encoder.layer": [0, 1, ...]}``: every numbered block stack found in the names.
    Names under a wrapper prefix (``module.``) are not a stack: strip the prefix first."""
    stacks: dict[str, set[int]] = {}
    for name in names:
        if name.startswith(WRAPPER_PREFIXES):
            continue
        match = _STACK_RE.match(name)
        if match:
            stacks.setdefault(match.group(1), set()).add(int(match.group(2)))
    return {prefix: sorted(idx) for prefix, idx in sorted(stacks.items())}


# Towers whose layer counts live in a sub-config (CLIP, SigLIP...).
_SUB_CONFIGS = {"text_model": "text_config", "vision_model": "vision_config"}


def config_get(config: dict[str, Any] | None, key: str) -> Any:
    """``config[key]``, where ``key`` may be dotted into a sub-config (``text_config.x``)."""
    value: Any = config or {}
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def config_layer_count(config: dict[str, Any] | None, stack: str = "") -> int | None:
    """The layer count config.json gives for ``stack`` (T5's decoder: ``num_decoder_layers``)."""
    key = config_layer_key(config, stack)
    return None if key is None else int(config_get(config, key))


def config_section(config: dict[str, Any] | None, name: str) -> str:
    """``"text_config."`` for a name in a tower whose settings live in a sub-config (CLIP's
    ``text_model.*``), else ``""``: the prefix of that tower's config.json keys."""
    sub = _SUB_CONFIGS.get(name.split(".")[0])
    return f"{sub}." if sub is not None and isinstance(config_get(config, sub), dict) else ""


def config_layer_key(config: dict[str, Any] | None, stack: str = "") -> str | None:
    """The (possibly dotted) config key holding the layer count of ``stack``, if any."""
    base = config_section(config, stack)
    keys = list(LAYER_COUNT_KEYS)
    if stack.split(".")[0] == "decoder" or ".decoder." in f".{stack}.":
        keys.insert(0, "num_decoder_layers")
    for key in keys:
        if is_int(config_get(config, base + key)):
            return base + key
    return None


def resolve_stack(
    names: Sequence[str], config: dict[str, Any] | None, where: str, stack: str | None = None
) -> tuple[str, int]:
    """The block stack to work on and its layer count: the only one found, or ``stack``.

    Errors: no stack, several (they are listed), gaps in the numbering, a config.json whose
    layer count disagrees with the weights."""
    stacks = find_layer_stacks(names)
    if stack is not None:
        stack = stack.rstrip(".")
        indices = sorted(
            {int(m.group(1)) for n in names if (m := re.match(re.escape(stack) + r"\.(\d+)\.", n))}
        )
        if not indices:
            found = ", ".join(stacks) or "none"
            raise SelectionError(
                f"no layer stack {stack!r} (no names like '{stack}.0.*')",
                where,
                f"stacks found: {found}",
            )
        stacks = {stack: indices}
    if not stacks:
        if any(".albert_layer_groups." in n for n in names):
            raise SelectionError(
                "ALBERT shares one layer group across all its layers: there is no numbered "
                "stack of layers",
                where,
                "select tensors with -p patterns, e.g. -p '*albert_layer_groups.0.*'",
            )
        raise SelectionError(
            "no encoder layer stack found (looked for '<model>.encoder.layer.N.', "
            "'<model>.layers.N.', 'transformer.h.N.', '<stack>.block.N.' and the like)",
            where,
            "select tensors with -p patterns instead",
        )
    if len(stacks) > 1:
        found = ", ".join(f"{p} ({len(i)} layers)" for p, i in stacks.items())
        raise SelectionError(
            f"several layer stacks found: {found}",
            where,
            "choose one with --stack PREFIX, or select layers with -p patterns",
        )
    ((prefix, indices),) = stacks.items()
    count = max(indices) + 1
    if indices != list(range(count)):
        missing = sorted(set(range(count)) - set(indices))
        raise SelectionError(
            f"layer stack {prefix} has gaps (missing layers {missing})",
            where,
            "select layers with -p patterns instead",
        )
    expected = config_layer_count(config, prefix)
    if expected is not None and expected != count:
        raise SelectionError(
            f"config.json says {expected} layers but the weights have {count} "
            f"({prefix}.0-{count - 1})",
            where,
            "check that config.json belongs to these weights",
        )
    return prefix, count


def top_layer_patterns(
    names: Sequence[str],
    n: int,
    config: dict[str, Any] | None,
    where: str,
    stack: str | None = None,
) -> list[str]:
    """Patterns for the ``n`` highest-numbered blocks of the layer stack (``stack`` when there
    are several)."""
    if n <= 0:
        raise SelectionError(
            f"--top-layers must be at least 1, got {n}", where, "give a positive layer count"
        )
    prefix, count = resolve_stack(names, config, where, stack)
    if n > count:
        raise SelectionError(
            f"--top-layers {n} is more than the {count} layers found ({prefix}.0-{count - 1})",
            where,
            f"give at most {count}",
        )
    return [f"{prefix}.{i}.*" for i in range(count - n, count)]


def resolve_selection(
    names: Sequence[str],
    patterns: Sequence[str],
    exclude: Sequence[str],
    *,
    top_layers: int | None,
    pooler: bool,
    config: dict[str, Any] | None,
    where: str,
    stack: str | None = None,
) -> list[str]:
    """The selected names, in checkpoint order. At least one selector is required.

    When nothing matches and every name carries a wrapper prefix (``module.``), the error says
    to pass ``--strip-prefix``."""
    include = list(as_patterns(patterns))
    try:
        if top_layers is not None:
            include += top_layer_patterns(names, top_layers, config, where, stack)
        if pooler:
            if not any(n for n in names if _is_pooler(n)):
                raise SelectionError(
                    "no pooler found (looked for '*pooler.dense.*')",
                    where,
                    "this checkpoint has no pooler; drop --pooler",
                )
            include.append(POOLER_PATTERN)
        if not include:
            raise SelectionError(
                "nothing selected", where, "give -p PATTERN, --top-layers N or --pooler"
            )
        return select(names, include, exclude)
    except (PatternError, SelectionError) as exc:
        hint = wrapper_hint(names)
        if not hint:
            raise
        raise type(exc)(exc.what, exc.where, f"{hint}; or {exc.hint}") from None


def _is_pooler(name: str) -> bool:
    return ".pooler.dense." in name or name.startswith("pooler.dense.")
