"""The safetensors dtype names, their sizes, and how to turn raw bytes into numbers.

Everything here works on raw little-endian bytes with numpy, so reading, copying and
re-initialising safetensors checkpoints never needs torch. ``BF16`` is widened to float32 by
a shift; 8-bit floats are copied as bytes but have no numeric view (they cannot be re-initialised
and get no statistics).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np


@dataclass(frozen=True)
class DType:
    name: str
    bits: int
    kind: str  # "float", "int", "uint", "bool", "complex", "float8", "subbyte"

    @property
    def itemsize(self) -> int:
        return max(1, self.bits // 8)

    @property
    def is_float(self) -> bool:
        """True for dtypes ckptsurgeon can re-initialise (F16, BF16, F32, F64)."""
        return self.kind == "float"


DTYPES: dict[str, DType] = {
    d.name: d
    for d in (
        DType("BOOL", 8, "bool"),
        DType("U8", 8, "uint"),
        DType("I8", 8, "int"),
        DType("F8_E5M2", 8, "float8"),
        DType("F8_E4M3", 8, "float8"),
        DType("F8_E8M0", 8, "float8"),
        DType("F8_E4M3FNUZ", 8, "float8"),
        DType("F8_E5M2FNUZ", 8, "float8"),
        DType("I16", 16, "int"),
        DType("U16", 16, "uint"),
        DType("F16", 16, "float"),
        DType("BF16", 16, "float"),
        DType("I32", 32, "int"),
        DType("U32", 32, "uint"),
        DType("F32", 32, "float"),
        DType("F64", 64, "float"),
        DType("I64", 64, "int"),
        DType("U64", 64, "uint"),
        DType("C64", 64, "complex"),
        DType("F4", 4, "subbyte"),
        DType("F6_E2M3", 6, "subbyte"),
        DType("F6_E3M2", 6, "subbyte"),
    )
}


def nbytes_of(dtype: str, shape: tuple[int, ...]) -> int:
    """Byte size of a tensor; sub-byte dtypes are packed (safetensors' rule)."""
    numel = numel_of(shape)
    bits = numel * DTYPES[dtype].bits
    if bits % 8:
        raise ValueError(f"{numel} elements of {dtype} do not fill whole bytes")
    return bits // 8


def numel_of(shape: Sequence[int]) -> int:
    numel = 1
    for dim in shape:
        numel *= dim
    return numel


# torch dtype name (str(torch.float32) without "torch.") -> safetensors name
TORCH_TO_ST = {
    "bool": "BOOL",
    "uint8": "U8",
    "int8": "I8",
    "int16": "I16",
    "uint16": "U16",
    "float16": "F16",
    "bfloat16": "BF16",
    "int32": "I32",
    "uint32": "U32",
    "float32": "F32",
    "float64": "F64",
    "int64": "I64",
    "uint64": "U64",
    "complex64": "C64",
    "float8_e5m2": "F8_E5M2",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e8m0fnu": "F8_E8M0",
    "float8_e4m3fnuz": "F8_E4M3FNUZ",
    "float8_e5m2fnuz": "F8_E5M2FNUZ",
}

_NUMPY_NAMES = {
    "BOOL": "bool",
    "U8": "<u1",
    "I8": "<i1",
    "I16": "<i2",
    "U16": "<u2",
    "F16": "<f2",
    "I32": "<i4",
    "U32": "<u4",
    "F32": "<f4",
    "F64": "<f8",
    "I64": "<i8",
    "U64": "<u8",
    "C64": "<c8",
}


def has_numeric_view(dtype: str) -> bool:
    """Whether :func:`to_float` can decode this dtype (all but 8-bit and sub-byte floats)."""
    return dtype in _NUMPY_NAMES or dtype == "BF16"


def to_float(raw: Any, dtype: str) -> np.ndarray:
    """Decode little-endian bytes to a float64 (or complex128) numpy array."""
    import numpy as np

    if dtype == "BF16":
        u16 = np.frombuffer(raw, dtype="<u2")
        return (u16.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    arr = np.frombuffer(raw, dtype=_NUMPY_NAMES[dtype])
    if dtype == "C64":
        return arr.astype(np.complex128)
    return arr.astype(np.float64)


def from_float32(values: np.ndarray, dtype: str) -> bytes | memoryview:
    """Encode float32 values as F16/BF16/F32/F64 bytes, rounding to nearest even like torch."""
    import numpy as np

    if dtype == "F32":
        return np.ascontiguousarray(values, dtype="<f4").data.cast("B")
    if dtype == "F16":
        return values.astype("<f2").data.cast("B")
    if dtype == "F64":
        return values.astype("<f8").data.cast("B")
    if dtype == "BF16":
        bits = values.view(np.uint32)
        # round to nearest even; the inputs are finite (normal draws, zeros, ones)
        rounded = (bits + (np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1)))) >> 16
        return rounded.astype("<u2").data.cast("B")
    raise ValueError(f"cannot encode float values as {dtype}")


CASTABLE = ("F16", "BF16", "F32", "F64")
CAST_TARGETS = {"bf16": "BF16", "fp16": "F16", "fp32": "F32"}
TORCH_DTYPE_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}


def _f32_bits(raw: Any, src: str) -> np.ndarray:
    """Source bytes widened to float32 bit patterns, exactly as torch widens them."""
    import numpy as np

    if src == "F32":
        return np.frombuffer(raw, dtype="<u4")
    if src == "BF16":
        return np.frombuffer(raw, dtype="<u2").astype(np.uint32) << np.uint32(16)
    if src == "F16":
        half = np.frombuffer(raw, dtype="<u2")
        bits = half.view("<f2").astype(np.float32).view(np.uint32)
        nan = (half & np.uint16(0x7FFF)) > np.uint16(0x7C00)
        if nan.any():  # torch sets the quiet bit of a NaN's payload
            bits[nan] |= np.uint32(0x00400000)
        return bits
    if src == "F64":
        with np.errstate(over="ignore", invalid="ignore"):
            return np.frombuffer(raw, dtype="<f8").astype(np.float32).view(np.uint32)
    raise ValueError(f"cannot cast from {src}")


_BLOCK = 1 << 16  # elements per in-place pass: stays in the CPU cache


def _bf16_rne(bits: np.ndarray) -> np.ndarray:
    """float32 bit patterns -> bfloat16 ones, rounded to nearest even (NaN not yet fixed)."""
    import numpy as np

    out = np.empty(bits.size, dtype="<u2")
    tmp = np.empty(min(bits.size, _BLOCK), dtype=np.uint32)
    for start in range(0, bits.size, _BLOCK):
        b = bits[start : start + _BLOCK]
        t = tmp[: b.size]
        np.right_shift(b, np.uint32(16), out=t)
        t &= np.uint32(1)
        t += np.uint32(0x7FFF)
        t += b
        t >>= np.uint32(16)
        out[start : start + b.size] = t
    return out


def cast_bytes(raw: Any, src: str, dst: str) -> tuple[bytes | memoryview, int, int]:
    """Convert little-endian ``src`` bytes to ``dst``, bit for bit as torch's ``.to()`` does on
    the CPU: widen to float32 exactly, then round to nearest even; NaN and Inf are kept (NaN bit
    patterns as torch makes them). Returns (bytes, values that overflowed to Inf, nonzero values
    flushed to zero)."""
    import numpy as np

    bits = _f32_bits(raw, src)
    if dst == "F32":
        if src == "F64":
            source = np.frombuffer(raw, dtype="<f8")
            return bits.data.cast("B"), *_lost(source, bits.view(np.float32), 0x7F800000)
        return bits.data.cast("B"), 0, 0  # widening is exact
    f = bits.view(np.float32)
    has_nan = bool(np.isnan(f).any())
    if dst == "BF16":
        out = _bf16_rne(bits)
        if has_nan:
            out[np.isnan(f)] = 0x7FC0 if src == "F16" else 0xFFFF
        inf_bits = 0x7F80
    elif dst == "F16":
        with np.errstate(over="ignore", invalid="ignore"):
            out = f.astype("<f2").view("<u2")
        if has_nan:  # quiet bit set, top of the payload kept
            nan = np.isnan(f)
            nb = bits[nan]
            out[nan] = (
                ((nb >> np.uint32(16)) & np.uint32(0x8000))
                | np.uint32(0x7E00)
                | ((nb >> np.uint32(13)) & np.uint32(0x3FF))
            ).astype(np.uint16)
        inf_bits = 0x7C00
    else:
        raise ValueError(f"cannot cast to {dst}")
    source = np.frombuffer(raw, dtype="<f8") if src == "F64" else f
    overflow, flushed = _lost(source, out, inf_bits)
    return out.data.cast("B"), overflow, flushed


def _lost(source: Any, out: Any, inf_bits: int) -> tuple[int, int]:
    """(finite values that became Inf, nonzero values that became zero), counted on the output
    first; the source is looked at only when the output has an Inf or a zero."""
    import numpy as np

    wide = out.dtype.itemsize == 4
    magnitude = out.view(np.uint32 if wide else np.uint16) & (
        np.uint32(0x7FFFFFFF) if wide else np.uint16(0x7FFF)
    )
    overflow = int(np.count_nonzero(magnitude == inf_bits))
    if overflow:
        overflow -= int(np.count_nonzero(np.isinf(source)))
    flushed = int(np.count_nonzero(magnitude == 0))
    if flushed:
        flushed -= int(np.count_nonzero(source == 0))
    return overflow, flushed
