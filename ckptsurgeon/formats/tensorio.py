"""Tensors in files: where their bytes are, and streaming them out.

The types shared by every checkpoint format, below both :mod:`checkpoint` (which finds and lists
checkpoints) and :mod:`torch_bin` (which reads ``.bin`` files): :class:`TensorInfo`, the reader
interface and the safetensors reader that copies bytes file to file in the kernel.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..dtypes import numel_of
from ..errors import CorruptCheckpointError, SourceReadError

# Called with a file name (and its fresh stat) before bytes are read from it, or with no
# arguments to check every file: raises if a source file changed since it was listed.
CheckUnchanged = Callable[..., None]


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

    def copy_to(self, info: TensorInfo, fd: int) -> None:
        for chunk in self.chunks(info):
            write_all(fd, chunk)


def write_all(fd: int, data: memoryview | bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (``os.write`` may write less than asked)."""
    view = memoryview(data)
    while view.nbytes:
        view = view[os.write(fd, view) :]


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
        assert info.offset is not None
        fd = self._fd(info.file)
        pos, end = info.offset, info.offset + info.nbytes
        while pos < end:
            try:
                data = os.pread(fd, min(chunk_bytes, end - pos), pos)
            except OSError as exc:
                raise read_error(exc, info.file) from exc
            if not data:
                raise CorruptCheckpointError(
                    "file ended early while reading tensor " + repr(info.name),
                    info.file,
                    "the file was truncated; re-download or re-export it",
                )
            pos += len(data)
            yield data  # bytes: compares with memcmp, decodes with np.frombuffer

    def copy_to(self, info: TensorInfo, fd: int) -> None:
        """Copy bytes file-to-file in the kernel (``copy_file_range``), no user-space buffer."""
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
                raise CorruptCheckpointError(
                    "file ended early while copying tensor " + repr(info.name),
                    info.file,
                    "the file was truncated; re-download or re-export it",
                )
            pos += n
            remaining -= n
        return None


def read_error(exc: OSError, path: object) -> SourceReadError:
    """A source file that exists but cannot be read, as a one-line error."""
    reason = exc.strerror or type(exc).__name__
    return SourceReadError(
        f"cannot read the checkpoint ({reason.lower()})",
        str(path),
        "check the file's permissions and that the disk is healthy",
    )
