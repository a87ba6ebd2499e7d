"""Where the output goes: the destination policy, one run per DEST, and publishing.

:func:`check_destination` refuses a DEST that is SRC, inside it, holds it, exists (without
``--overwrite``) or is not a checkpoint; :func:`destination_lock` holds DEST for one run;
:func:`publish` moves the finished temporary into place atomically (an exchange of directories
where the kernel can). The safetensors writer (:mod:`.writer`) writes the temporary.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from ..errors import CkptSurgeonError, DestinationError, WriteError
from ..formats.checkpoint import Checkpoint
from ..formats.sidefiles import LOCK_SUFFIX, OLD_SUFFIX, check_replaceable, is_weight_file
from ..libc import libc_function
from ..record import copied_entries


def is_single_file(dest: str | os.PathLike[str]) -> bool:
    """DEST ending in ``.safetensors`` is one file; anything else is a model directory."""
    return Path(dest).name.endswith(".safetensors")


def _variants(path: str | os.PathLike[str]) -> set[str]:
    """A path as given (absolute) and with every symbolic link resolved."""
    return {os.path.abspath(path), os.path.realpath(path)}


def _within(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip(os.sep) + os.sep)


def written_by_ckptsurgeon(dest: Path) -> set[str] | None:
    """The entries ckptsurgeon recorded copying into a directory it wrote, or None when the
    directory's weights were not written by ckptsurgeon."""
    from ..formats.checkpoint import open_checkpoint

    try:
        return copied_entries(open_checkpoint(dest).metadata)
    except (CkptSurgeonError, OSError):
        return None


def check_destination(src: Checkpoint, dest: Path, overwrite: bool) -> None:
    """Refuse DEST when it is the source, inside it, contains it, or exists (without
    ``overwrite``), or when ``overwrite`` would replace anything but a checkpoint. Paths are
    compared as given and with symbolic links resolved. Called before anything is read or
    written, and by ``--dry-run``."""
    dest = Path(dest)
    dest_paths = _variants(dest)
    protected: set[str] = set()
    for p in [src.path, *src.own_files]:
        protected |= _variants(p)
    roots = _variants(src.root) if src.root is not None else set()
    for d in dest_paths:
        if d in protected or d in roots:
            raise DestinationError(
                "destination is the source checkpoint",
                str(dest),
                "choose a new path for the output",
            )
    for d in dest_paths:
        if any(_within(d, r) for r in roots):
            raise DestinationError(
                "destination is inside the source directory",
                str(dest),
                "write the output outside the source checkpoint",
            )
        if any(_within(p, d) for p in protected | roots):
            raise DestinationError(
                "destination contains the source checkpoint",
                str(dest),
                "write the output somewhere that does not hold the source",
            )
    if dest.is_symlink():
        raise DestinationError(
            "destination is a symbolic link", str(dest), "give the real path, or remove the link"
        )
    if dest.exists():
        if not overwrite:
            raise DestinationError(
                "destination already exists", str(dest), "choose a new path or pass --overwrite"
            )
        if dest.is_dir():
            if is_single_file(dest):
                raise DestinationError(
                    "destination ends in .safetensors but is a directory",
                    str(dest),
                    "remove it or choose another path",
                )
            check_replaceable(dest, written_by_ckptsurgeon(dest) or set())
        elif not dest.is_file() or not is_weight_file(dest.name):
            raise DestinationError(
                "destination is a file that is not a checkpoint; --overwrite replaces only "
                "checkpoints",
                str(dest),
                "remove it by hand if you mean to replace it, or choose another path",
            )
        elif not is_single_file(dest):
            raise DestinationError(
                "destination is a file but the output is a directory",
                str(dest),
                "give a DEST ending in .safetensors, or another path",
            )
    parent = Path(os.path.abspath(dest)).parent
    if not parent.is_dir():
        raise DestinationError(
            "the destination's parent directory does not exist",
            str(parent),
            "create it first",
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DestinationError(
            "cannot write to the destination's directory (permission denied)",
            str(parent),
            "choose a writable location",
        )


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def destination_lock(dest: Path) -> Iterator[None]:
    """Hold DEST for this run: an exclusive ``flock`` on ``.<name>.ckptsurgeon-lock`` beside it.

    A second run to the same DEST (which would share the temporary) fails at once naming the
    holder's pid. The kernel drops the lock when its process dies however it dies, so a lock
    file left by a killed run is simply taken over; the file is removed when the run ends."""
    import fcntl

    path = dest.parent / f".{dest.name}{LOCK_SUFFIX}"
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise DestinationError(
                    "a symbolic link sits where the destination's lock file goes",
                    str(path),
                    "remove the link",
                ) from None
            raise write_error(exc, dest) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise write_error(exc, dest) from exc
            raise DestinationError(
                "destination is being written by another ckptsurgeon run"
                + (f" (pid {holder})" if holder.isdigit() else ""),
                str(dest),
                "wait for it to finish, or write somewhere else",
            ) from None
        try:  # its last holder may have removed the file between our open and our lock
            same = os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def write_error(exc: OSError, dest: Path) -> WriteError:
    if exc.errno == errno.ENOSPC:
        what, hint = "no space left on device", "free some space or write elsewhere"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        what, hint = "permission denied while writing", "choose a writable location"
    else:
        what, hint = f"writing failed ({exc.strerror or exc})", "check the destination"
    return WriteError(what + "; nothing was written", str(dest), hint)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    import ctypes

    c_int, c_str = ctypes.c_int, ctypes.c_char_p
    renameat2 = libc_function("renameat2", c_int, c_str, c_int, c_str, ctypes.c_uint)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return bool(rc == 0)


def publish(tmp: Path, dest: Path, overwrite: bool) -> None:
    if dest.exists() or dest.is_symlink():
        if not overwrite:  # appeared while we were writing
            raise DestinationError(
                "destination appeared while writing",
                str(dest),
                "choose a new path or pass --overwrite",
            )
        if dest.is_dir() and not dest.is_symlink():
            if _exchange(tmp, dest):
                remove_path(tmp)  # now holds the previous DEST
                return
            old = dest.parent / f".{dest.name}{OLD_SUFFIX}"
            remove_path(old)
            os.rename(dest, old)
            os.rename(tmp, dest)
            remove_path(old)
            return
    os.replace(tmp, dest)
