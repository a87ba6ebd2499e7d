"""Typed errors. The library raises these; the CLI turns each into one ``Error: ...`` line.

Every message has the shape ``<what> (<file or tensor>): <next step>`` so that a person or a
pipeline log shows what went wrong, where, and what to do about it. The classes also subclass
the matching built-in exception so that existing ``except`` clauses keep working.
"""

from __future__ import annotations

import reprlib
from typing import Any

# No part of a message grows past this: values from users' files (a 1 MB pattern, a recipe of
# nested aliases) are echoed cut, so an error stays one readable line and costs no memory.
MAX_PART = 1000

_ECHO = reprlib.Repr()
_ECHO.maxstring = 120
_ECHO.maxother = 120
_ECHO.maxlevel = 3
_ECHO.maxlist = _ECHO.maxtuple = _ECHO.maxdict = _ECHO.maxset = 6


def echo(value: Any) -> str:
    """``repr(value)`` bounded in length and depth (nested or huge values are cut with ...)."""
    return _ECHO.repr(value)


def bounded(text: str, limit: int = MAX_PART) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit:,} more characters)"


def first_line(exc: BaseException) -> str:
    """The first line of a foreign exception's message (its type when it has none), bounded:
    what an error of ours quotes from a library's."""
    return (str(exc).splitlines() or [type(exc).__name__])[0][:160]


class CkptSurgeonError(Exception):
    """Base class of every error ckptsurgeon raises on purpose."""

    def __init__(self, what: str, where: str = "", hint: str = "") -> None:
        self.what = bounded(str(what))
        self.where = bounded(str(where))
        self.hint = bounded(str(hint))
        super().__init__(self.message)

    @property
    def message(self) -> str:
        text = self.what
        if self.where:
            text += f" ({self.where})"
        if self.hint:
            text += f": {self.hint}"
        return text

    def __str__(self) -> str:
        return self.message


class CheckpointNotFoundError(CkptSurgeonError, FileNotFoundError):
    """A path does not exist, or a directory holds no weights."""


class SourceReadError(CkptSurgeonError, OSError):
    """A source file exists but cannot be read (permissions, I/O error)."""


class UnsupportedFormatError(CkptSurgeonError, ValueError):
    """A file is not a checkpoint format ckptsurgeon reads."""


class CorruptCheckpointError(CkptSurgeonError, ValueError):
    """A checkpoint file or index is malformed, truncated or inconsistent."""


class UnsafePickleError(CorruptCheckpointError):
    """A pickle asks for something beyond plain tensors; it is refused, never executed."""


class ConfigError(CkptSurgeonError, ValueError):
    """config.json is not a JSON object, or a key that ckptsurgeon relies on is wrong."""


class RecipeError(CkptSurgeonError, ValueError):
    """A recipe (or an operation's options) is malformed: unknown op or key, wrong type."""


class PatternError(CkptSurgeonError, ValueError):
    """A selection pattern is malformed or matches nothing."""


class SelectionError(CkptSurgeonError, ValueError):
    """A selection cannot be carried out (no selector, unknown layer stack, tied-weight trap...)."""


class InitRuleError(CkptSurgeonError, ValueError):
    """A selected tensor has no re-initialisation rule."""


class DestinationError(CkptSurgeonError, FileExistsError):
    """The destination exists, is the source, or cannot be written."""


class WriteError(CkptSurgeonError, OSError):
    """Writing the output failed (disk full, permissions...); nothing was left behind."""


class VerificationError(CkptSurgeonError, RuntimeError):
    """The written output does not match what was planned."""
