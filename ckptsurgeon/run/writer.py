"""The streaming safetensors writer.

The header depends only on names, dtypes and shapes, so it is computed and written first; each
tensor's bytes are then streamed in by a caller-supplied ``emit`` function (a kernel-side copy
for kept tensors, chunked generation for re-initialised ones). Peak memory is one chunk, not
one checkpoint.

Publishing is atomic: everything is written into a temporary sibling of DEST
(``.<name>.ckptsurgeon-tmp``), flushed with fsync, reopened and verified, and only then renamed
into place. A temp left behind by a killed run is removed by the next run.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import interrupts
from ..errors import CkptSurgeonError, VerificationError
from ..formats.checkpoint import SAFE_INDEX, SAFE_SINGLE, Checkpoint, open_checkpoint, write_all
from ..formats.safetensors import build_header
from ..formats.sidefiles import (
    TMP_SUFFIX,
    SideFiles,
    copy_side_files,
    plan_side_files,
)
from ..libc import CLONE_BLOCK, clone_range, libc_function
from ..record import with_copied
from .destination import (
    check_destination,
    destination_lock,
    fsync_dir,
    is_single_file,
    publish,
    remove_path,
    write_error,
)
from .layout import (
    DEFAULT_MAX_SHARD_SIZE,
    OutTensor,
    data_order,
    data_start,
    shard_filename,
    shard_groups,
)

KICK_BYTES = 64 << 20


@dataclass(frozen=True)
class WriteResult:
    destination: Path
    files: tuple[str, ...]  # weight files written, relative to destination (or its name)
    copied: tuple[str, ...]  # other files copied from the source root
    total_bytes: int
    tensors: int


def write_safetensors(
    path: Path,
    tensors: Sequence[OutTensor],
    metadata: dict[str, str],
    emit: Callable[[OutTensor, int], int | None],
    *,
    fsync: bool = True,
) -> None:
    """Write one safetensors file: header first, then each tensor's bytes via ``emit``.

    ``emit(tensor, fd)`` must write exactly ``tensor.nbytes`` bytes to ``fd``, or, when it
    returns a count k, the bytes of that tensor and the k-1 that follow it in
    :func:`data_order` (a run of tensors copied in one kernel call); this is checked.
    Write-back to disk is started every ``KICK_BYTES`` so that flushing overlaps writing;
    with ``fsync=False`` the caller must fsync the file before publishing it.
    """
    ordered = data_order(tensors)
    entries = [(t.name, t.dtype, t.shape, t.nbytes) for t in ordered]
    header, _ = build_header(entries, metadata, data_start(ordered))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        if not _clones_here(ordered, fd):  # blocks cloned later need no space now
            _preallocate(fd, len(header) + sum(t.nbytes for t in ordered))
        write_all(fd, header)
        pos = len(header)
        kicked = 0
        i = 0
        while i < len(ordered):
            t = ordered[i]
            interrupts.check()  # an interrupt whose exception something swallowed
            count = emit(t, fd) or 1
            nbytes = sum(x.nbytes for x in ordered[i : i + count])
            pos += nbytes
            i += count
            if pos - kicked >= KICK_BYTES:
                _start_writeback(fd)
                kicked = pos
            now = os.lseek(fd, 0, os.SEEK_CUR)
            if now != pos:
                what = f"tensor {t.name!r}" if count == 1 else f"{count} tensors from {t.name!r}"
                raise VerificationError(
                    f"wrote {now - pos + nbytes} bytes for {what}, expected {nbytes}",
                    str(path),
                    "this is a bug in ckptsurgeon; please report it",
                )
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


_CLONES: dict[tuple[int, int], bool] = {}  # (source device, destination device) -> works


def _clones_here(ordered: Sequence[OutTensor], fd: int) -> bool:
    """Whether blocks of this file's copied tensors can be cloned from their source into ``fd``
    (asked once per pair of file systems: one block cloned into the empty file, then cut off)."""
    source = next((t.source for t in ordered if t.source is not None), None)
    if source is None:
        return False
    try:
        src_fd = os.open(source[0], os.O_RDONLY)
    except OSError:
        return False
    try:
        st = os.fstat(src_fd)
        key = (st.st_dev, os.fstat(fd).st_dev)
        if key not in _CLONES:
            if st.st_size < CLONE_BLOCK:
                return False
            try:
                clone_range(src_fd, 0, CLONE_BLOCK, fd, 0)
                _CLONES[key] = True
            except OSError:
                _CLONES[key] = False
            os.ftruncate(fd, 0)
        return _CLONES[key]
    finally:
        os.close(src_fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_SYNC_FILE_RANGE: Any = None
_FALLOCATE: Any = None
FALLOC_FL_KEEP_SIZE = 1
# preallocation failing with these is the write failing early; with any other error (a file
# system without fallocate, EOPNOTSUPP) the blocks are simply allocated as they are written
_FATAL_ALLOCATION_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _preallocate(fd: int, size: int) -> None:
    """Reserve ``size`` bytes of disk for ``fd`` before writing (Linux ``fallocate`` with
    FALLOC_FL_KEEP_SIZE: the file's size still grows only as bytes are written).

    The output's size is known before its first byte, and allocating its blocks in one call
    instead of page by page during write-back made writing and flushing bert-base ~15% faster
    here (see benchmarks/); a disk too small is found before anything is written. glibc's
    ``posix_fallocate`` is not used: where the file system cannot preallocate it writes zeros,
    doubling the I/O.
    """
    import ctypes

    global _FALLOCATE
    if _FALLOCATE is None:
        c_off = ctypes.c_int64
        _FALLOCATE = libc_function("fallocate", ctypes.c_int, ctypes.c_int, c_off, c_off) or False
    if not _FALLOCATE or size <= 0:
        return
    if _FALLOCATE(fd, FALLOC_FL_KEEP_SIZE, 0, size) != 0:
        err = ctypes.get_errno()
        if err in _FATAL_ALLOCATION_ERRORS:
            raise OSError(err, os.strerror(err))


def _start_writeback(fd: int) -> None:
    """Ask the kernel to start writing dirty pages of ``fd`` now (Linux sync_file_range with
    SYNC_FILE_RANGE_WRITE: asynchronous, no wait). The final fsync then has little left to do,
    as with ``cp`` followed by ``sync``. A no-op where unavailable."""
    global _SYNC_FILE_RANGE
    if _SYNC_FILE_RANGE is None:
        import ctypes

        c_off = ctypes.c_int64
        _SYNC_FILE_RANGE = (
            libc_function("sync_file_range", ctypes.c_int, c_off, c_off, ctypes.c_uint) or False
        )
    if _SYNC_FILE_RANGE:
        _SYNC_FILE_RANGE(fd, 0, 0, 2)  # SYNC_FILE_RANGE_WRITE


def write_checkpoint(
    src: Checkpoint,
    dest: str | os.PathLike[str],
    tensors: Sequence[OutTensor],
    emit: Callable[[OutTensor, int], int | None],
    metadata: dict[str, str],
    *,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
    side_files: SideFiles | None = None,
    replace_files: dict[str, bytes] | None = None,
) -> WriteResult:
    """Write ``tensors`` as a new safetensors checkpoint at ``dest``, atomically, and verify it.

    ``dest`` ending in ``.safetensors`` is a single file; anything else is a directory in the
    Hugging Face layout (sharded past ``max_shard_size``), with the source's other files copied
    as ``side_files`` says (planned from the source when not given), and ``replace_files``
    (name -> bytes, e.g. an edited config.json) written in place of the copies. SIGINT, SIGTERM
    and SIGHUP end the write with nothing published and the temporary removed.
    """
    dest = Path(dest)
    check_destination(src, dest, overwrite)
    single = is_single_file(dest)
    side = SideFiles() if single else side_files
    if side is None:
        side = plan_side_files(src.root, src.own_files)
    meta = {"format": "pt", **metadata}
    replace_files = {} if single else dict(replace_files or {})
    copied = sorted({*side.top_level, *replace_files})
    if not single:
        meta = with_copied(meta, [e.rstrip("/") for e in copied])
    tmp = dest.parent / f".{dest.name}{TMP_SUFFIX}"
    with interrupts.guard(), destination_lock(dest):
        remove_path(tmp)  # a temp left by a killed run
        try:
            if single:
                write_safetensors(tmp, tensors, meta, emit)
                files: tuple[str, ...] = (dest.name,)
                _verify(tmp, tensors)
            else:
                tmp.mkdir()
                files = _write_dir(tmp, shard_groups(tensors, dest, max_shard_size), meta, emit)
                copy_side_files(side, tmp)
                for name, data in replace_files.items():
                    (tmp / name).write_bytes(data)
                _verify(tmp, tensors)
                fsync_dir(tmp)
            src.check_unchanged()
            if overwrite:
                check_destination(src, dest, overwrite)  # what appeared at DEST meanwhile
            with interrupts.publishing():
                publish(tmp, dest, overwrite)
        except BaseException as exc:
            remove_path(tmp)
            if isinstance(exc, OSError) and not isinstance(exc, CkptSurgeonError):
                raise write_error(exc, dest) from exc
            raise
    fsync_dir(dest.parent)
    return WriteResult(
        destination=dest,
        files=files,
        copied=tuple(copied),
        total_bytes=sum(t.nbytes for t in tensors),
        tensors=len(tensors),
    )


def _write_dir(
    tmp: Path,
    groups: list[list[OutTensor]],
    meta: dict[str, str],
    emit: Callable[[OutTensor, int], int | None],
) -> tuple[str, ...]:
    if len(groups) == 1:
        write_safetensors(tmp / SAFE_SINGLE, groups[0], meta, emit)
        return (SAFE_SINGLE,)
    names = [shard_filename(i + 1, len(groups)) for i in range(len(groups))]
    weight_map: dict[str, str] = {}
    for fname, group in zip(names, groups, strict=True):
        # fsync all shards at the end: earlier shards flush while later ones are written
        write_safetensors(tmp / fname, group, meta, emit, fsync=False)
        weight_map.update({t.name: fname for t in group})
    for fname in names:
        _fsync_file(tmp / fname)
    index = {
        "metadata": {"total_size": sum(t.nbytes for group in groups for t in group)},
        "weight_map": dict(sorted(weight_map.items())),
    }
    text = json.dumps(index, indent=2, sort_keys=True) + "\n"
    fd = os.open(tmp / SAFE_INDEX, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        write_all(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    return (*names, SAFE_INDEX)


def _verify(path: Path, tensors: Sequence[OutTensor]) -> None:
    """Reopen what was written and check names, dtypes, shapes and sizes against the plan."""
    try:
        out = open_checkpoint(path)
    except CkptSurgeonError as exc:
        raise VerificationError(
            f"the written output does not read back ({exc.what})",
            str(path),
            "this is a bug in ckptsurgeon; please report it",
        ) from exc
    got = {t.name: (t.dtype, t.shape, t.nbytes) for t in out.tensors}
    want = {t.name: (t.dtype, t.shape, t.nbytes) for t in tensors}
    if got != want:
        diff = sorted(set(got.items()) ^ set(want.items()))[:3]
        raise VerificationError(
            f"the written output differs from the plan: {diff}",
            str(path),
            "this is a bug in ckptsurgeon; please report it",
        )
