"""LoRA and DoRA deltas merged into base tensors, as PEFT's ``merge_and_unload`` computes them.

PEFT computes ``(B @ A) * s`` for the whole matrix; a matrix product of a band of rows can
round differently (the BLAS picks its kernel by shape), so each merged tensor is computed whole,
in float32 with torch, in PEFT's order of operations, and rounded once to the tensor's dtype.
Memory: the largest merged tensor three times (its bytes, then float32 weight and delta, in
buffers reused from tensor to tensor) and its result; the rest of the model streams.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import UnsupportedFormatError
from ..formats.tensorio import TensorInfo, TensorReader
from ..plan import LoraMerge, PlannedTensor

CHUNK_BYTES = 8 << 20

Sources = Sequence[tuple[dict[str, TensorInfo], TensorReader]]


_TORCH = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}


class Workspace:
    """Buffers kept from one merged tensor to the next, grown to the largest: a fresh 100 MB
    buffer per tensor cost more in page faults than the arithmetic, and kept memory high
    (``merge-lora`` of a 6 GB base: 3.3x of cp+sync and 909 MiB before, see benchmarks/)."""

    def __init__(self) -> None:
        self._buffers: dict[str, Any] = {}

    def get(self, key: str, numel: int, dtype: str) -> Any:
        """A flat tensor of ``numel`` elements of ``dtype``, reused across calls."""
        import torch

        have = self._buffers.get(key)
        if have is None or have.numel() < numel or str(have.dtype) != f"torch.{dtype}":
            self._buffers[key] = have = torch.empty(numel, dtype=getattr(torch, dtype))
        return have[:numel]


def _float32(sources: Sources, where: tuple[int, str], work: Workspace, key: str) -> Any:
    """A whole tensor of an input as a float32 torch tensor (widened exactly, by torch), in the
    workspace's ``key`` buffer (float32 tensors are read straight into it)."""
    import torch

    infos, reader = sources[where[0]]
    info = infos[where[1]]
    if info.dtype not in _TORCH:
        raise UnsupportedFormatError(
            f"tensor {info.name!r} is {info.dtype}; LoRA merges into floating tensors",
            info.file,
            "merge into a float checkpoint",
        )
    native = getattr(torch, _TORCH[info.dtype])
    out = work.get(key, info.nbytes // native.itemsize, "float32")
    if info.dtype == "F32":  # read straight into the buffer
        reader.read_into(info, memoryview(out.view(torch.uint8).numpy()).cast("B"))
    else:  # a chunk at a time into a reused buffer, widened by torch
        step = CHUNK_BYTES - CHUNK_BYTES % native.itemsize
        staging = work.get("staging", min(step, info.nbytes), "uint8")
        for start in range(0, info.nbytes, step):
            n = min(step, info.nbytes - start)
            reader.read_into(info, memoryview(staging.numpy()).cast("B")[:n], start)
            first = start // native.itemsize
            out[first : first + n // native.itemsize].copy_(staging[:n].view(native))
    return out.view(info.shape)


def merged_bytes(
    p: PlannedTensor, spec: LoraMerge, sources: Sources, chunk_bytes: int, work: Workspace
) -> Iterator[bytes | memoryview]:
    """The merged tensor's bytes in ``p``'s dtype, in chunks.

    A float32 base follows PEFT's order, so that the result equals ``merge_and_unload``'s bit
    for bit: ``delta = B @ A`` (transposed for Conv1D and embeddings), ``delta * s``, then
    ``W + delta`` (DoRA: scaled row by row by ``magnitude / ||W + delta||``). A 16-bit base
    (which PEFT merges in its own dtype, rounding twice) is widened to float32 and gets
    ``W + s * (B @ A)`` in one fused ``addmm`` (a third of the passes over memory), rounded
    once."""
    import torch

    weight = _float32(sources, (0, spec.tensor), work, "weight")
    a = _float32(sources, spec.a, work, "a")
    b = _float32(sources, spec.b, work, "b")
    with torch.no_grad():
        if p.native != "F32" and spec.magnitude is None:
            target = weight if spec.kind == "linear" else weight.T
            target.addmm_(b, a, alpha=spec.scaling)
        else:
            rows, cols = b.shape[0], a.shape[1]
            delta = work.get("delta", rows * cols, "float32").view(rows, cols)
            torch.matmul(b, a, out=delta)
            if spec.kind != "linear":  # fan_in_fan_out (Conv1D), embeddings: W transposed
                delta = delta.T
            delta.mul_(spec.scaling)
            weight += delta
            if spec.magnitude is not None:  # DoRA: PEFT's merge_unsafe
                magnitude = _float32(sources, spec.magnitude, work, "magnitude")
                norm = torch.linalg.norm(weight, dim=1).to(weight.dtype)
                weight *= (magnitude / norm).view(-1, 1)
    # rounded once to the base's dtype (to nearest even, torch's own .to()), a chunk at a time:
    # each a fresh buffer, since chunks wait in the writer's queue while the next are made
    flat = weight.reshape(-1)
    native = getattr(torch, _TORCH[p.native])
    step = max(1, chunk_bytes // native.itemsize)
    for start in range(0, flat.numel(), step):
        piece = flat[start : start + step].to(native, copy=True)
        yield memoryview(piece.view(torch.uint8).numpy()).cast("B")
