"""Selecting tensors by glob pattern.

Semantics (written down because users' scripts depend on them):

- ``fnmatch.fnmatchcase`` over the *full* tensor name: case-sensitive, ``*`` matches any run of
  characters *including dots*, ``?`` one character, ``[seq]`` a character class.
- Brace expansion before matching: ``{a,b}`` alternatives and ``{9..11}`` integer ranges,
  nested braces allowed: ``bert.encoder.layer.{9..11}.*``, ``*.{query,key}.weight``.
- Trap: ``layer.1*`` matches ``layer.1.``, ``layer.10.`` and ``layer.11.``; write ``layer.1.*``.
- A pattern that matches nothing is an error naming the pattern and the closest names.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase

from .errors import PatternError

_RANGE_RE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{a,b}`` and ``{1..3}`` groups: ``"x.{1..2}.{a,b}"`` -> 4 patterns."""
    start = pattern.find("{")
    if start < 0:
        if "}" in pattern:
            raise PatternError("unbalanced '}' in pattern", pattern, "escape or balance the braces")
        return [pattern]
    depth = 0
    end = -1
    for i in range(start, len(pattern)):
        if pattern[i] == "{":
            depth += 1
        elif pattern[i] == "}":
            depth -= 1
            if depth == 0:
                end = i
                break
    if end < 0:
        raise PatternError("unbalanced '{' in pattern", pattern, "close every '{' with '}'")
    inner = pattern[start + 1 : end]
    prefix, suffix = pattern[:start], pattern[end + 1 :]
    range_match = _RANGE_RE.match(inner)
    if range_match:
        lo, hi = int(range_match.group(1)), int(range_match.group(2))
        step = 1 if hi >= lo else -1
        options = [str(i) for i in range(lo, hi + step, step)]
    else:
        options = _split_top_level(inner)
    out: list[str] = []
    for option in options:
        out.extend(expand_braces(prefix + option + suffix))
    return out


def _split_top_level(inner: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    current = ""
    for ch in inner:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return parts


def matches(name: str, pattern: str) -> bool:
    """True when ``name`` matches ``pattern`` (after brace expansion)."""
    return any(fnmatchcase(name, p) for p in expand_braces(pattern))


def closest_names(pattern: str, names: Sequence[str], n: int = 3) -> list[str]:
    """The names most similar to a pattern, for 'did you mean' hints."""
    probe = expand_braces(pattern)[0].replace("*", "").replace("?", "")
    return difflib.get_close_matches(probe, list(names), n=n, cutoff=0.3)


def select(
    names: Iterable[str],
    include: Sequence[str],
    exclude: Sequence[str] = (),
    *,
    require_match: bool = True,
) -> list[str]:
    """Names matching any ``include`` pattern and no ``exclude`` pattern, in input order.

    With ``require_match`` every include pattern must match at least one name, else
    :class:`PatternError` names the pattern and the closest names.
    """
    all_names = list(names)
    include, exclude = as_patterns(include), as_patterns(exclude)
    expanded_inc = {p: expand_braces(p) for p in include}
    expanded_exc = [e for p in exclude for e in expand_braces(p)]
    hit: set[str] = set()
    for pattern, globs in expanded_inc.items():
        found = [n for n in all_names if any(fnmatchcase(n, g) for g in globs)]
        if require_match and not found:
            raise_no_match(pattern, all_names)
        hit.update(found)
    if require_match:
        for pattern in exclude:
            if not any(matches(n, pattern) for n in all_names):
                raise_no_match(pattern, all_names, "exclude pattern")
    return [n for n in all_names if n in hit and not any(fnmatchcase(n, g) for g in expanded_exc)]


def raise_no_match(pattern: str, names: Sequence[str], kind: str = "pattern") -> None:
    close = closest_names(pattern, names)
    hint = "check the names with `ckptsurgeon inspect`"
    if close:
        hint = "closest names: " + ", ".join(close)
    raise PatternError(f"{kind} matches no tensor", pattern, hint)


def as_patterns(patterns: str | Iterable[str] | None) -> tuple[str, ...]:
    """Patterns as a tuple; a bare string is one pattern (not a sequence of characters)."""
    if patterns is None:
        return ()
    if isinstance(patterns, str):
        return (patterns,)
    return tuple(patterns)


def group_of(name: str) -> str:
    """The layer (``bert.encoder.layer.3``, ``transformer.h.3``, ``decoder.block.3``) or module
    a tensor belongs to, for summaries."""
    match = re.match(r"^(.*?(?:^|\.)(?:layers?|h|block)\.\d+)\.", name)
    return match.group(1) if match else name.rsplit(".", 1)[0]


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders numbers by value: ``layer.2`` before ``layer.10``."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name) if part
    )
