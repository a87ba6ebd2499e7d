"""Linux libc functions through ctypes, loaded on first use (None elsewhere)."""

from __future__ import annotations

import sys
from typing import Any

_LIBC: Any = None


def libc_function(name: str, *argtypes: Any) -> Any:
    """A Linux libc function through ctypes (loaded on first use), or None elsewhere."""
    global _LIBC
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        if _LIBC is None:
            _LIBC = ctypes.CDLL(None, use_errno=True)
        func = getattr(_LIBC, name)
    except (OSError, AttributeError):
        return None
    func.argtypes = list(argtypes)
    return func
