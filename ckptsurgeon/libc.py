"""Linux libc functions through ctypes, loaded on first use (None elsewhere)."""

from __future__ import annotations

import errno
import sys
from typing import Any

_LIBC: Any = None


def libc_function(name: str, *argtypes: Any) -> Any:
    """A Linux libc function through ctypes (loaded on first use), or None elsewhere."""
    global _LIBC
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        if _LIBC is None:
            _LIBC = ctypes.CDLL(None, use_errno=True)
        func = getattr(_LIBC, name)
    except (OSError, AttributeError):
        return None
    func.argtypes = list(argtypes)
    return func


# glibc's mallopt parameters
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def keep_freed_buffers(mmap_threshold: int = 32 << 20, trim_threshold: int = 128 << 20) -> bool:
    """Ask glibc's malloc to serve buffers below ``mmap_threshold`` from its heaps and keep up
    to ``trim_threshold`` bytes of freed memory instead of handing it back to the kernel.

    Chunks of a few MB are allocated and freed by the thousand per job (a read chunk, a cast
    chunk). glibc's defaults give some of them fresh pages every time (an mmap, or a heap
    trimmed and grown again), and the kernel zeroes and maps each 4 KiB page on first touch:
    ``average`` of three 2.2 GB checkpoints took 850,000 page faults and 5.6 s of system time,
    45,000 and 3.4 s with these settings (see benchmarks/). For the command line only: a
    library does not set its host process's allocator. False where this is not glibc."""
    import ctypes

    mallopt = libc_function("mallopt", ctypes.c_int, ctypes.c_int)
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(M_TRIM_THRESHOLD, trim_threshold)
    )


# ioctl FICLONERANGE = _IOW(0x94, 13, struct file_clone_range): the same number on every Linux
FICLONERANGE = 0x4020940D
CLONE_BLOCK = 4096  # the block size clones are aligned to (XFS and btrfs default, ext4's page)


def clone_range(src_fd: int, src_offset: int, length: int, dst_fd: int, dst_offset: int) -> None:
    """Share ``length`` bytes of ``src_fd`` at ``dst_offset`` of ``dst_fd`` (Linux
    ``FICLONERANGE``: copy-on-write file systems such as XFS with reflink and btrfs; nothing is
    written, the extents are shared). Offsets and length must be multiples of the file system's
    block size. Raises OSError (EOPNOTSUPP, EXDEV, EINVAL...) where it cannot clone."""
    import fcntl
    import struct

    if not sys.platform.startswith("linux"):
        raise OSError(errno.EOPNOTSUPP, "clones need Linux")
    fcntl.ioctl(dst_fd, FICLONERANGE, struct.pack("qQQQ", src_fd, src_offset, length, dst_offset))
