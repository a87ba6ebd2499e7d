"""What ``check`` counts in tensor bytes: NaN, Inf and non-zero values of floating tensors, read
as integers (sign bit masked) so that every float format, bfloat16 and float8 included, is
counted exactly, without torch and without decoding."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from ..formats.tensorio import TensorInfo

CHUNK = 4 << 20  # measured: 2 MB 1.42 s, 4 MB 1.27 s, 8 MB 1.39 s, 16 MB 1.59 s on 6 GB

# dtype -> (unsigned view, magnitude mask, Inf pattern or None, NaN when magnitude > this, or ==)
_FLOATS: dict[str, tuple[str, int, int | None, int, bool]] = {
    "F64": ("<u8", 0x7FFF_FFFF_FFFF_FFFF, 0x7FF0_0000_0000_0000, 0x7FF0_0000_0000_0000, False),
    "F32": ("<u4", 0x7FFF_FFFF, 0x7F80_0000, 0x7F80_0000, False),
    "F16": ("<u2", 0x7FFF, 0x7C00, 0x7C00, False),
    "BF16": ("<u2", 0x7FFF, 0x7F80, 0x7F80, False),
    "F8_E5M2": ("u1", 0x7F, 0x7C, 0x7C, False),
    "F8_E4M3": ("u1", 0x7F, None, 0x7F, True),  # e4m3fn: no Inf, NaN is S.1111.111
}


@dataclass
class Tally:
    nan: int = 0
    inf: int = 0
    nonzero: int = 0  # pieces holding a non-zero value

    def merge(self, other: Tally) -> None:
        self.nan += other.nan
        self.inf += other.inf
        self.nonzero += other.nonzero


_SCRATCH = threading.local()


def _magnitudes(piece: bytes | memoryview, view: str, mask: int) -> Any:
    """The piece's values as unsigned integers with the sign bit masked, in a scratch buffer
    reused by this thread (no allocation per chunk)."""
    import numpy as np

    values = np.frombuffer(piece, dtype=view)
    scratch = getattr(_SCRATCH, view, None)
    if scratch is None or scratch.size < values.size:
        scratch = np.empty(max(values.size, CHUNK // values.itemsize), dtype=view)
        setattr(_SCRATCH, view, scratch)
    out = scratch[: values.size]
    np.bitwise_and(values, np.array(mask, dtype=view), out=out)
    return out


def scan(
    item: tuple[list[tuple[TensorInfo, bytes | memoryview]], int],
) -> tuple[list[tuple[str, Tally]], int]:
    """Count NaN, Inf and non-zero values in each floating tensor's piece of one chunk (on a
    worker thread: numpy releases the GIL). One masking pass and one ``max``: the largest
    magnitude says whether any value is non-zero and whether any is NaN or Inf (their exponent
    is all ones, above every finite value); only then are they counted."""
    import numpy as np

    cut, n = item
    out = []
    for t, piece in cut:
        spec = _FLOATS.get(t.dtype)
        if spec is None or not len(piece):
            continue
        view, mask, inf, nan_at, nan_equal = spec
        magnitude = _magnitudes(piece, view, mask)
        top = int(magnitude.max())
        tally = Tally(nonzero=int(top > 0))
        special = inf if inf is not None else nan_at
        if top >= special:
            if nan_equal:
                tally.nan = int(np.count_nonzero(magnitude == nan_at))
            else:
                tally.nan = int(np.count_nonzero(magnitude > nan_at))
            if inf is not None:
                tally.inf = int(np.count_nonzero(magnitude == inf))
        out.append((t.name, tally))
    return out, n


def equal_tensors(a: TensorInfo, b: TensorInfo) -> bool:
    """Whether two tensors of plain files hold the same bytes (a tied head and its embedding)."""
    if a.nbytes != b.nbytes:
        return False
    with open(a.file, "rb") as fa, open(b.file, "rb") as fb:
        fa.seek(a.offset or 0)
        fb.seek(b.offset or 0)
        left = a.nbytes
        while left:
            n = min(CHUNK, left)
            if fa.read(n) != fb.read(n):
                return False
            left -= n
    return True
