"""The click group: library errors to one ``Error: ...`` line and an exit status, signals to
130/143, ``--debug``, ``--quiet``, ``--version``. The commands register on :data:`main`.

Exit status: 0 success, 2 any error (usage, missing path, corrupt or unsafe file, existing
destination...), 1 reserved for ``diff``, ``verify`` (and ``check``) finding a failure.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import click

from .. import interrupts
from ..errors import CkptSurgeonError
from ..version import __version__
from .options import _quiet_option

EXIT_ERROR = 2


class CommandError(click.ClickException):
    exit_code = EXIT_ERROR


def _debug_enabled(ctx: click.Context | None) -> bool:
    if os.environ.get("CKPTSURGEON_DEBUG"):
        return True
    while ctx is not None:
        if ctx.obj and ctx.obj.get("debug"):
            return True
        ctx = ctx.parent
    return False


def _one_blas_thread() -> None:
    """Give numpy's OpenBLAS one thread unless the user chose a count (before numpy loads).

    No command does linear algebra, but OpenBLAS starts a thread per core when numpy is imported
    and they spin for a while: about 0.1 s of a core, which on a two-core machine was taken from
    the kernel copies and the draws (bert-base ``reinit`` 0.34 s -> 0.31 s). Commands draw in
    parallel with their own threads; BLAS never does work here.
    """
    if not any(
        os.environ.get(v) for v in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")
    ):
        os.environ["OPENBLAS_NUM_THREADS"] = "1"


class Group(click.Group):
    """Turns library errors into one ``Error: ...`` line and exit 2 (``--debug``: traceback)."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        interrupts.install()  # before any command imports torch: see interrupts.py
        _one_blas_thread()
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "ckptsurgeon"
            click.echo(f"Error: {exc.format_message()} (see '{where} --help')", err=True)
            sys.exit(EXIT_ERROR)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort as exc:
            if isinstance(exc.__cause__, KeyboardInterrupt) or interrupts.pending() is not None:
                _interrupted(exc.__cause__ or KeyboardInterrupt())  # a Ctrl-C click caught
            click.echo("Error: aborted; nothing was written", err=True)
            sys.exit(EXIT_ERROR)
        except (KeyboardInterrupt, interrupts.Terminated) as exc:
            _interrupted(exc)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CkptSurgeonError as exc:
            _after_a_swallowed_interrupt()
            if _debug_enabled(ctx):
                traceback.print_exc()
            raise CommandError(exc.message) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except (KeyboardInterrupt, interrupts.Terminated) as exc:
            _interrupted(exc)
        except BrokenPipeError:
            # whoever read stdout went away (`... | head`): not an error of this command, whose
            # own status stands (diff: 1 when something differs)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit((ctx.obj or {}).get("exit_code", 0))
        except Exception as exc:  # a bug or an unexpected OS error: still one clean line
            _after_a_swallowed_interrupt()
            if _debug_enabled(ctx):
                traceback.print_exc()
            raise CommandError(
                f"unexpected {type(exc).__name__}: {exc}: rerun with --debug and report it"
            ) from None


def _after_a_swallowed_interrupt() -> None:
    """An error that follows a signal whose exception something swallowed is the signal's doing.

    A Ctrl-C inside ``import torch`` can be caught there and leave torch half-imported, so the
    next use fails with an ImportError ("cannot load module more than once per process"): the
    user interrupted the job, and its status says so (130), not "unexpected error" (2)."""
    exc = interrupts.pending()
    if exc is not None:
        _interrupted(exc)


def _interrupted(exc: BaseException) -> None:
    what = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"terminated by {exc}"
    try:
        click.echo(f"Error: {what}; nothing was written", err=True)
    finally:
        sys.exit(interrupts.exit_status(exc))


@click.group(
    cls=Group,
    context_settings={
        "help_option_names": ["-h", "--help"],
        "terminal_width": 100,
        "max_content_width": 100,
    },
)
@click.version_option(__version__, prog_name="ckptsurgeon")
@click.option("--debug", is_flag=True, help="Show the full traceback on errors.")
@_quiet_option
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    # the help text is made from the commands themselves, once they are all added (below)
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
