"""Tensors in files: where their bytes are, and streaming them out.

The types shared by every checkpoint format, below both :mod:`checkpoint` (which finds and lists
checkpoints) and :mod:`torch_bin` (which reads ``.bin`` files): :class:`TensorInfo`, the reader
interface and the safetensors reader that copies bytes file to file in the kernel.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from ..dtypes import cast_bytes, numel_of
from ..errors import CorruptCheckpointError, SourceReadError
from ..libc import CLONE_BLOCK, clone_range

# Called with a file name (and its fresh stat) before bytes are read from it, or with no
# arguments to check every file: raises if a source file changed since it was listed.
CheckUnchanged = Callable[..., None]


@dataclass(frozen=True)
class Part:
    """A byte range of a file holding consecutive elements of a tensor (C order), stored as
    ``dtype`` when that differs from the tensor's (widened exactly on reading)."""

    file: str
    offset: int
    nbytes: int
    dtype: str | None = None


@dataclass(frozen=True)
class Block:
    """A rectangular chunk of a tensor (DCP's chunk grid): ``sizes`` elements at ``offsets``,
    stored contiguously (C order) at ``offset`` in ``file``."""

    file: str
    offset: int
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as listed by a checkpoint: no bytes, just where to find them."""

    name: str
    dtype: str  # safetensors name: F32, BF16, I64...
    shape: tuple[int, ...]
    nbytes: int
    file: str
    offset: int | None = None  # absolute file offset of the bytes, where known
    stored_name: str | None = None  # the name in the file, when renamed (--strip-prefix)
    # training checkpoints: the tensor is its parts back to back (ZeRO partitions, row-sharded
    # DCP chunks), or is assembled from blocks of a chunk grid (column-sharded DCP chunks)
    parts: tuple[Part, ...] = ()
    blocks: tuple[Block, ...] = ()

    @property
    def key(self) -> str:
        """The name under which the file stores this tensor."""
        return self.stored_name or self.name

    @property
    def params(self) -> int:
        return numel_of(self.shape)


class TensorReader:
    """Streams tensor bytes. Subclasses implement :meth:`chunks`; :meth:`copy_to` may be faster."""

    def __init__(self, check_unchanged: CheckUnchanged) -> None:
        self.check_unchanged = check_unchanged

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        pass

    def chunks(self, info: TensorInfo, chunk_bytes: int = 8 << 20) -> Iterator[bytes | memoryview]:
        raise NotImplementedError

    def read(self, info: TensorInfo) -> bytes:
        """All bytes of one tensor (only for small tensors; prefer :meth:`chunks`)."""
        return b"".join(bytes(c) for c in self.chunks(info))

    def read_into(self, info: TensorInfo, view: memoryview, start: int = 0) -> None:
        """Fill ``view`` (writable bytes) with the tensor's bytes from byte ``start`` on: no
        buffer per chunk where the bytes lie in one file (:class:`SafetensorsReader`)."""
        pos, end = 0, start + len(view)
        for chunk in self.chunks(info):
            lo, hi = max(pos, start), min(pos + len(chunk), end)
            if lo < hi:
                view[lo - start : hi - start] = memoryview(chunk)[lo - pos : hi - pos]
            pos += len(chunk)
            if pos >= end:
                break

    def clone_to(self, info: TensorInfo, fd: int) -> int:
        """Copy ``info``'s bytes to ``fd``, sharing blocks where the file system can; returns
        the bytes shared (here none: see :class:`SafetensorsReader`)."""
        self.copy_to(info, fd)
        return 0

    def copy_to(self, info: TensorInfo, fd: int) -> None:
        for chunk in self.chunks(info):
            write_all(fd, chunk)


def write_all(fd: int, data: memoryview | bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (``os.write`` may write less than asked)."""
    view = memoryview(data)
    while view.nbytes:
        view = view[os.write(fd, view) :]


# errors of FICLONERANGE that mean "not here" (no reflink, another file system, a block size
# the offsets do not fit): copy instead
_NO_CLONE = {errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.EBADF, errno.EPERM}

# errors of copy_file_range that mean "not here": fall back to read/write
_NO_COPY_RANGE = {
    errno.EXDEV,
    errno.ENOSYS,
    errno.EINVAL,
    errno.EOPNOTSUPP,
    errno.EBADF,
    errno.EPERM,
}


class SafetensorsReader(TensorReader):
    def __init__(self, check_unchanged: CheckUnchanged) -> None:
        super().__init__(check_unchanged)
        self._fds: dict[str, int] = {}
        self._fast_copy = hasattr(os, "copy_file_range")
        self._clones = True

    def _fd(self, fname: str) -> int:
        fd = self._fds.get(fname)
        if fd is None:
            try:
                fd = os.open(fname, os.O_RDONLY)
            except OSError as exc:
                raise read_error(exc, fname) from exc
            self._fds[fname] = fd
            self.check_unchanged(fname, os.fstat(fd))
        return fd

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def chunks(self, info: TensorInfo, chunk_bytes: int = 8 << 20) -> Iterator[bytes | memoryview]:
        if info.parts or info.blocks:  # chunks of exactly chunk_bytes, as from one file
            yield from _exactly(self._pieces(info, chunk_bytes), chunk_bytes)
            return
        assert info.offset is not None
        fd = self._fd(info.file)
        pos, end = info.offset, info.offset + info.nbytes
        while pos < end:
            try:
                data = os.pread(fd, min(chunk_bytes, end - pos), pos)
            except OSError as exc:
                raise read_error(exc, info.file) from exc
            if not data:
                raise _ended_early(info, "reading")
            pos += len(data)
            yield data  # bytes: compares with memcmp, decodes with np.frombuffer

    def read_into(self, info: TensorInfo, view: memoryview, start: int = 0) -> None:
        if info.parts or info.blocks or info.offset is None:
            return super().read_into(info, view, start)
        fd = self._fd(info.file)
        done = 0
        while done < len(view):
            try:
                n = os.preadv(fd, [view[done:]], info.offset + start + done)
            except OSError as exc:
                raise read_error(exc, info.file) from exc
            if n == 0:
                raise _ended_early(info, "reading")
            done += n
        return None

    def _pieces(self, info: TensorInfo, chunk_bytes: int) -> Iterator[bytes | memoryview]:
        if info.blocks:
            yield from self._assemble(info, chunk_bytes)
            return
        for part in info.parts:
            piece = _part_info(info, part)
            if part.dtype is None or part.dtype == info.dtype:
                yield from self.chunks(piece, chunk_bytes)
                continue
            for raw in self.chunks(piece, chunk_bytes):
                yield cast_bytes(raw, part.dtype, info.dtype)[0]

    def _assemble(self, info: TensorInfo, chunk_bytes: int) -> Iterator[memoryview]:
        """A tensor from the blocks of a chunk grid, a band of whole rows (dim 0) at a time:
        each block's rows in the band are one contiguous read, placed by numpy slicing."""
        import numpy as np

        shape = info.shape or (1,)
        item = info.nbytes // max(1, numel_of(shape))
        row_bytes = numel_of(shape[1:]) * item
        band = max(1, chunk_bytes // max(1, row_bytes))
        blocks = [(b, b.offsets or (0,), b.sizes or (1,)) for b in info.blocks]
        for r0 in range(0, shape[0], band):
            r1 = min(shape[0], r0 + band)
            buf = np.empty((r1 - r0, *shape[1:], item), dtype=np.uint8)
            for b, offs, sizes in blocks:
                a0, a1 = max(r0, offs[0]), min(r1, offs[0] + sizes[0])
                if a0 >= a1:
                    continue
                brow = numel_of(sizes[1:]) * item
                piece = TensorInfo(
                    info.name,
                    "U8",
                    ((a1 - a0) * brow,),
                    (a1 - a0) * brow,
                    b.file,
                    b.offset + (a0 - offs[0]) * brow,
                )
                data = b"".join(bytes(c) for c in self.chunks(piece))
                cols = [slice(o, o + n) for o, n in zip(offs[1:], sizes[1:], strict=True)]
                where = (slice(a0 - r0, a1 - r0), *cols)
                buf[where] = np.frombuffer(data, np.uint8).reshape((a1 - a0, *sizes[1:], item))
            yield buf.reshape(-1).data

    def clone_to(self, info: TensorInfo, fd: int) -> int:
        """Copy like :meth:`copy_to`, but share the blocks that lie at the same offset modulo
        the clone block in the source and at ``fd``'s position (copy-on-write file systems:
        nothing written); the unaligned head and tail are copied. Returns the bytes cloned
        (0 where clones do not work: the copy is then the whole)."""
        if not self._clones or info.parts or info.blocks or info.offset is None:
            self.copy_to(info, fd)
            return 0
        out = os.lseek(fd, 0, os.SEEK_CUR)
        head = -out % CLONE_BLOCK
        body = (info.nbytes - head) // CLONE_BLOCK * CLONE_BLOCK
        if (info.offset - out) % CLONE_BLOCK or body <= 0:
            self.copy_to(info, fd)
            return 0
        start = info.offset + head
        self.copy_to(_span(info, info.offset, head), fd)
        try:
            clone_range(self._fd(info.file), start, body, fd, out + head)
        except OSError as exc:
            if exc.errno not in _NO_CLONE:
                raise read_error(exc, info.file) from exc
            self._clones = False  # another file system, or none that clones: copy from now on
            self.copy_to(_span(info, start, info.nbytes - head), fd)
            return 0
        os.lseek(fd, out + head + body, os.SEEK_SET)
        self.copy_to(_span(info, start + body, info.nbytes - head - body), fd)
        return body

    def copy_to(self, info: TensorInfo, fd: int) -> None:
        """Copy bytes file-to-file in the kernel (``copy_file_range``), no user-space buffer."""
        if info.parts:
            for part in info.parts:
                if part.dtype is not None and part.dtype != info.dtype:
                    for chunk in self.chunks(replace(info, parts=(part,))):
                        write_all(fd, chunk)
                else:
                    self.copy_to(_part_info(info, part), fd)
            return None
        if info.blocks:
            return super().copy_to(info, fd)
        assert info.offset is not None
        if not self._fast_copy:
            return super().copy_to(info, fd)
        src = self._fd(info.file)
        pos, remaining = info.offset, info.nbytes
        while remaining:
            try:
                n = os.copy_file_range(src, fd, min(remaining, 1 << 30), pos)
            except OSError as exc:
                if exc.errno not in _NO_COPY_RANGE:
                    raise
                # cross-device or unsupported file system: fall back to plain reads and writes
                self._fast_copy = False
                rest = TensorInfo(info.name, info.dtype, (remaining,), remaining, info.file, pos)
                for chunk in self.chunks(rest):
                    write_all(fd, chunk)
                return None
            if n == 0:
                raise _ended_early(info, "copying")
            pos += n
            remaining -= n
        return None


def _ended_early(info: TensorInfo, doing: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"file ended early while {doing} tensor {info.name!r}",
        info.file,
        "the file was truncated; re-download or re-export it",
    )


def _span(info: TensorInfo, offset: int, nbytes: int) -> TensorInfo:
    """``nbytes`` bytes of ``info``'s file from ``offset``, as a tensor of bytes."""
    return TensorInfo(info.name, "U8", (nbytes,), nbytes, info.file, offset)


def _exactly(pieces: Iterator[bytes | memoryview], size: int) -> Iterator[bytes | memoryview]:
    """The bytes of ``pieces`` re-cut into chunks of exactly ``size`` (the last shorter)."""
    buf = bytearray()
    for piece in pieces:
        if not buf and len(piece) == size:
            yield piece
            continue
        buf += piece
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)


def _part_info(info: TensorInfo, part: Part) -> TensorInfo:
    return TensorInfo(info.name, "U8", (part.nbytes,), part.nbytes, part.file, part.offset)


def read_error(exc: OSError, path: object) -> SourceReadError:
    """A source file that exists but cannot be read, as a one-line error."""
    reason = exc.strerror or type(exc).__name__
    return SourceReadError(
        f"cannot read the checkpoint ({reason.lower()})",
        str(path),
        "check the file's permissions and that the disk is healthy",
    )
