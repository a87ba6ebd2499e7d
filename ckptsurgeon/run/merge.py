"""LoRA and DoRA deltas merged into base tensors, as PEFT's ``merge_and_unload`` computes them.

PEFT computes ``(B @ A) * s`` for the whole matrix; a matrix product of a band of rows can
round differently (the BLAS picks its kernel by shape), so each merged tensor is computed whole,
in float32 with torch, in PEFT's order of operations, and rounded once to the tensor's dtype.
Memory: two float32 copies of the largest merged tensor; the rest of the model streams.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import UnsupportedFormatError
from ..formats.tensorio import TensorInfo, TensorReader
from ..plan import LoraMerge, PlannedTensor

Sources = Sequence[tuple[dict[str, TensorInfo], TensorReader]]


_TORCH = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def _float32(sources: Sources, where: tuple[int, str]) -> Any:
    """A whole tensor of an input as a float32 torch tensor (widened exactly, by torch)."""
    import torch

    infos, reader = sources[where[0]]
    info = infos[where[1]]
    if info.dtype not in _TORCH:
        raise UnsupportedFormatError(
            f"tensor {info.name!r} is {info.dtype}; LoRA merges into floating tensors",
            info.file,
            "merge into a float checkpoint",
        )
    buffer = bytearray(info.nbytes)
    view = memoryview(buffer)
    pos = 0
    for chunk in reader.chunks(info):
        view[pos : pos + len(chunk)] = chunk
        pos += len(chunk)
    stored = torch.frombuffer(buffer, dtype=getattr(torch, _TORCH[info.dtype]))
    return stored.reshape(info.shape).float()


def merged_bytes(
    p: PlannedTensor, spec: LoraMerge, sources: Sources, chunk_bytes: int
) -> Iterator[bytes | memoryview]:
    import torch

    weight = _float32(sources, (0, spec.tensor))
    a = _float32(sources, spec.a)
    b = _float32(sources, spec.b)
    with torch.no_grad():
        delta = b @ a
        if spec.kind != "linear":  # fan_in_fan_out (Conv1D) and embeddings store W transposed
            delta = delta.T
        delta = delta * spec.scaling
        if spec.magnitude is not None:  # DoRA: PEFT's merge_unsafe
            magnitude = _float32(sources, spec.magnitude)
            norm = torch.linalg.norm(weight + 1 * delta, dim=1).to(weight.dtype)
            factor = magnitude / norm
            merged = factor.view(-1, 1) * (weight + delta)
        else:
            weight += delta
            merged = weight
        del delta
        # rounded once to the base's dtype (to nearest even, torch's own .to())
        out = merged.to(getattr(torch, _TORCH[p.native])).contiguous()
    del merged, weight
    view = memoryview(out.view(torch.uint8).numpy()).cast("B")
    for start in range(0, len(view), chunk_bytes):
        yield view[start : start + chunk_bytes]
