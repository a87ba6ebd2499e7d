"""The ``ckptsurgeon`` command (console script and ``python -m ckptsurgeon``).

This module imports nothing heavy before it can answer a Ctrl-C: an interrupt while the CLI's
modules load ends with the same one line and exit 130 as one during a job, not a traceback."""

import contextlib
import os
import sys

_INTERRUPTED = 130


def run() -> None:
    try:
        from .libc import keep_freed_buffers

        keep_freed_buffers()  # before the first large buffer: see its docstring
        from .cli import main

        main()  # answers every later interrupt itself, and exits
    except KeyboardInterrupt:  # while the modules load, before the CLI's handlers are set
        try:
            sys.stderr.write("Error: interrupted; nothing was written\n")
        finally:
            _leave(_INTERRUPTED)
    except SystemExit as exc:
        if exc.code not in (_INTERRUPTED, 128 + 15, 128 + 1):  # SIGINT, SIGTERM, SIGHUP
            raise
        _leave(int(exc.code))


def _leave(code: int) -> None:
    """Exit now with ``code``. An interrupted run has nothing left to publish or clean up, and
    Python's own shutdown, under ``python -m``, can turn a handled Ctrl-C into a death by SIGINT
    (exit -2) when the interrupt passed through code it ran itself (seen 8 times in 60)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
