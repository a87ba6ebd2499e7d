"""The command line: parse, call the library, render. Data on stdout, warnings on stderr.

``cli.group`` is the click group (errors to exit codes, signals), ``cli.surgery`` registers a
command per operation and ``apply``, ``cli.reading`` the reading commands, ``cli.options`` builds
options from the operations' definitions and ``cli.render`` draws the results.
"""

from __future__ import annotations

from . import reading, surgery  # noqa: F401  (they register their commands on main)
from .group import EXIT_ERROR, CommandError, _one_blas_thread, main

__all__ = ["EXIT_ERROR", "CommandError", "_one_blas_thread", "main"]


def _main_help() -> str:
    """The group's help: every command, as registered (none can be left out of the summary)."""
    names = sorted(main.commands)
    return (
        "Offline surgery on transformer checkpoints: " + ", ".join(names) + ".\n\n"
        "SRC is a model directory (safetensors first, then pytorch_model.bin, sharded or not), "
        "a single .safetensors, .index.json, .bin, .pt or .pth file, or a Hugging Face repo id "
        "(org/name[@revision]). Patterns are globs over full tensor names (case-sensitive, '*' "
        "crosses dots) with brace expansion: 'bert.encoder.layer.{9..11}.*'. 'apply' runs "
        "several steps in one pass."
    )


main.help = _main_help()


if __name__ == "__main__":  # pragma: no cover
    main()
