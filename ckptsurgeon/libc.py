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
