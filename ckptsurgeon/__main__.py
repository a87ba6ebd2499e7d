"""The ``ckptsurgeon`` command (console script and ``python -m ckptsurgeon``).

This module imports nothing heavy before it can answer a Ctrl-C: an interrupt while the CLI's
modules load ends with the same one line and exit 130 as one during a job, not a traceback."""

import sys


def run() -> None:
    try:
        from .cli import main

        main()  # answers every later interrupt itself, and exits
    except KeyboardInterrupt:  # while the modules load, before the CLI's handlers are set
        try:
            sys.stderr.write("Error: interrupted; nothing was written\n")
        finally:
            sys.exit(130)


if __name__ == "__main__":
    run()
