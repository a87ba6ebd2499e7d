"""Byte sizes such as ``5GB``: one parser, one convention.

Decimal units follow transformers' ``max_shard_size``: ``KB`` = 1000, ``MB`` = 10**6,
``GB`` = 10**9, ``TB`` = 10**12. Binary units are spelled with an ``i``: ``KiB`` = 1024,
``MiB`` = 2**20, ``GiB`` = 2**30, ``TiB`` = 2**40. A bare number is bytes. Case-insensitive.
"""

from __future__ import annotations

import re

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_size(text: str | int) -> int:
    """Parse ``"5GB"`` -> 5_000_000_000, ``"500MiB"`` -> 524_288_000, ``"1024"`` -> 1024.

    >>> parse_size("5GB")
    5000000000

    Raises ``ValueError`` with a message that lists the accepted units.
    """
    if isinstance(text, int):
        value = text
    else:
        match = _SIZE_RE.match(text)
        unit = match.group(2).upper() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(
                f"{text!r} is not a size: use a number with an optional unit "
                "(B, KB, MB, GB, TB = powers of 1000; KiB, MiB, GiB, TiB = powers of 1024), "
                "e.g. 5GB"
            )
        value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"{text!r} is not a positive size: give at least 1 byte")
    return value


def format_size(n: int) -> str:
    """Human-readable decimal size: ``440.1 MB``."""
    for unit, factor in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{n} B"
