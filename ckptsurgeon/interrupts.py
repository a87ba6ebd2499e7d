"""Interrupts: SIGINT, SIGTERM and SIGHUP end a job with nothing published.

A signal handler both *records* the signal and raises, so that the writer's clean-up runs. The
record matters because an exception raised at an arbitrary moment can be swallowed by code we do
not control (``import torch`` catches it at some points and carries on): the writer checks the
record before it publishes, so an interrupt at any moment ends with nothing published.

The CLI installs the handlers at start-up (:func:`install`); the library installs them around a
write (:func:`guard`) when the program has not set handlers of its own.
"""

from __future__ import annotations

import importlib.abc
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SIGNALS = tuple(
    s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP")) if s is not None
)

_received: int | None = None
_critical = False
_deferring = 0

# Modules whose import must not be interrupted half-way: a KeyboardInterrupt inside torch's
# C++ init makes pybind11 abort the process (exit -6, core dump), and one that torch's Python
# code swallows leaves it half-imported, failing every later use.
DEFERRED_IMPORTS = ("torch", "transformers", "numpy")


class Terminated(BaseException):
    """Raised for SIGTERM or SIGHUP (SIGINT raises :class:`KeyboardInterrupt`, as usual).

    A ``BaseException`` like ``KeyboardInterrupt``: ``except Exception`` does not catch it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def _handler(signum: int, frame: Any) -> None:
    global _received
    _received = signum
    if _critical or _deferring:  # publishing (finish it: the output is then complete) or
        return  # importing torch: raised once the import is done
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


def reset() -> None:
    global _received
    _received = None


def pending() -> BaseException | None:
    """The exception of a signal that arrived (even if the one it raised was swallowed), or None."""
    if _received is None:
        return None
    if _received == signal.SIGINT:
        return KeyboardInterrupt()
    return Terminated(_received)


def check() -> None:
    """Raise if a signal arrived, even if the exception it raised was swallowed."""
    exc = pending()
    if exc is not None:
        raise exc


@contextmanager
def publishing() -> Iterator[None]:
    """Run the final rename(s) without being interrupted half-way.

    A signal received before is raised now; one received during is recorded and not raised:
    once the rename is done, the output is complete and the job has succeeded."""
    global _critical
    check()
    _critical = True
    try:
        yield
    finally:
        _critical = False
        reset()


def install() -> None:
    """Handle SIGINT, SIGTERM and SIGHUP from now on (main thread only; a no-op elsewhere),
    and hold them while :data:`DEFERRED_IMPORTS` load.

    A signal that the parent set to be ignored (``nohup``) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _handler)
    if not any(isinstance(f, _DeferringFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _DeferringFinder())


@contextmanager
def deferred() -> Iterator[None]:
    """Signals that arrive meanwhile are recorded, and raised when the block ends."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if not _deferring and not _critical:
        check()


class _DeferringFinder(importlib.abc.MetaPathFinder):
    """Loads :data:`DEFERRED_IMPORTS` (top-level modules) with signals deferred."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in DEFERRED_IMPORTS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _DeferringLoader(spec.loader)
                return spec
        return None


class _DeferringLoader(importlib.abc.Loader):
    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        with deferred():
            self.loader.exec_module(module)

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package...
        return getattr(self.loader, name)


@contextmanager
def guard() -> Iterator[None]:
    """Handle the signals while a write runs, where the program left Python's defaults."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    defaults = (signal.SIG_DFL, signal.default_int_handler)
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    mine = [s for s, h in previous.items() if h in defaults]
    if mine:
        reset()  # a record left by an earlier write whose exception the caller handled
    for signum in mine:
        signal.signal(signum, _handler)
    try:
        yield
    finally:
        for signum in mine:
            signal.signal(signum, previous[signum])


def exit_status(exc: BaseException) -> int:
    """The shell's convention: 128 + the signal's number."""
    if isinstance(exc, Terminated):
        return 128 + exc.signum
    return 128 + int(signal.SIGINT)
