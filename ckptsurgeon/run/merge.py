"""LoRA and DoRA deltas merged into base tensors, as PEFT's ``merge_and_unload`` computes them.

PEFT computes ``(B @ A) * s`` for the whole matrix; a matrix product of a band of rows rounds
differently (the BLAS picks its kernel by shape: bands of an 8192 x 3072 rank-16 product
differed from the whole product in about 40% of their float32 values here), so a float32 or
float64 base's merged tensors are computed whole, in PEFT's order of operations; memory is then
the largest merged tensor three times (its bytes, the widened weight and delta, in buffers
reused from tensor to tensor). A 16-bit base, which PEFT merges in its own dtype (rounding
twice) so that no bits of PEFT's are to be met, is merged a band of rows at a time in float32
and rounded once: memory a chunk, whatever the tensor. torch runs on one thread here."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..errors import UnsupportedFormatError
from ..formats.tensorio import TensorInfo, TensorReader
from ..formats.torch_bin import tensor_bytes
from ..plan import LoraMerge, PlannedTensor

CHUNK_BYTES = 8 << 20
BAND_BYTES = 1 << 20  # of float32 rows merged at once: they stay in a core's cache

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


def _widened(
    sources: Sources, where: tuple[int, str], work: Workspace, key: str, wide: str = "float32"
) -> Any:
    """A whole tensor of an input as a ``wide`` (float32 or float64) torch tensor, widened
    exactly by torch, in the workspace's ``key`` buffer (tensors of that dtype are read straight
    in)."""
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
    out = work.get(key, info.nbytes // native.itemsize, wide)
    if native == getattr(torch, wide):  # read straight into the buffer
        reader.read_into(info, tensor_bytes(out))
    else:  # a chunk at a time into a reused buffer, widened by torch
        step = CHUNK_BYTES - CHUNK_BYTES % native.itemsize
        staging = work.get("staging", min(step, info.nbytes), "uint8")
        for start in range(0, info.nbytes, step):
            n = min(step, info.nbytes - start)
            reader.read_into(info, memoryview(staging.numpy()).cast("B")[:n], start)
            first = start // native.itemsize
            out[first : first + n // native.itemsize].copy_(staging[:n].view(native))
    return out.view(info.shape)


@contextmanager
def _one_thread() -> Iterator[None]:
    """torch's arithmetic on the calling thread only, for the block: with two intra-op threads
    the idle one spins and takes the core the writer needs (user time 20 s instead of 6.5 s
    for the 6 GB merge of benchmarks/many.py, and slower). Restored after, between yields."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def merged_bytes(
    p: PlannedTensor, spec: LoraMerge, sources: Sources, chunk_bytes: int, work: Workspace
) -> Iterator[bytes | memoryview]:
    """The merged tensor's bytes in ``p``'s dtype, in chunks.

    A float32 base follows PEFT's order, so that the result equals ``merge_and_unload``'s bit
    for bit: ``delta = B @ A`` (transposed for Conv1D and embeddings), ``delta * s``, then
    ``W + delta`` (DoRA: scaled row by row by ``magnitude / ||W + delta||``). A float64 base
    the same in float64, as PEFT (which moves the adapter to its base's dtype). A 16-bit LoRA
    base (which PEFT merges in its own dtype, rounding twice) is merged band by band
    (:func:`_banded`); a 16-bit DoRA base whole in float32 in PEFT's order; either rounded
    once."""
    import torch

    if p.native in ("F16", "BF16") and spec.magnitude is None:
        yield from _banded(p, spec, sources, chunk_bytes, work)
        return
    wide = "float64" if p.native == "F64" else "float32"
    with _one_thread(), torch.no_grad():
        weight = _widened(sources, (0, spec.tensor), work, "weight", wide)
        a = _widened(sources, spec.a, work, "a", wide)
        b = _widened(sources, spec.b, work, "b", wide)
        rows, cols = b.shape[0], a.shape[1]
        delta = work.get("delta", rows * cols, wide).view(rows, cols)
        torch.matmul(b, a, out=delta)
        if spec.kind != "linear":  # fan_in_fan_out (Conv1D), embeddings: W transposed
            delta = delta.T
        delta.mul_(spec.scaling)
        weight += delta
        if spec.magnitude is not None:  # DoRA: PEFT's merge_unsafe
            magnitude = _widened(sources, spec.magnitude, work, "magnitude", wide)
            norm = torch.linalg.norm(weight, dim=1).to(weight.dtype)
            weight *= (magnitude / norm).view(-1, 1)
    # rounded once to the base's dtype (to nearest even, torch's own .to()), a chunk at a time:
    # each a fresh buffer, since chunks wait in the writer's queue while the next are made
    flat = weight.reshape(-1)
    native = getattr(torch, _TORCH[p.native])
    step = max(1, chunk_bytes // native.itemsize)
    for start in range(0, flat.numel(), step):
        with _one_thread():
            piece = flat[start : start + step].to(native, copy=True)
        yield tensor_bytes(piece)


def band_rows(cols: int) -> int:
    """Rows of a 16-bit base merged per ``addmm``: fixed by the row's width alone, so that the
    bytes do not depend on how they are chunked for writing."""
    return max(1, BAND_BYTES // (4 * max(1, cols)))


def _banded(
    p: PlannedTensor, spec: LoraMerge, sources: Sources, chunk_bytes: int, work: Workspace
) -> Iterator[memoryview]:
    """A 16-bit base merged :func:`band_rows` rows at a time: each band widened to float32 in a
    buffer that stays in the CPU's cache, given ``W + s * (B @ A)`` by one fused ``addmm`` and
    rounded once. Two passes over memory instead of about ten over the whole float32 tensor, and
    memory a chunk instead of two float32 copies of the largest tensor (about 1 GB each for a
    70B model's MLP). The BLAS may round a band's product differently from the whole matrix's
    in float32's last place, which can move a 16-bit value by one step (tests measure)."""
    import torch

    infos, reader = sources[0]
    info = infos[spec.tensor]
    native = getattr(torch, _TORCH[info.dtype])
    rows = info.shape[0]
    cols = info.nbytes // native.itemsize // max(1, rows)
    # W[i:j] += s * left[i:j] @ right; Conv1D and embeddings hold W transposed: (B @ A).T
    with _one_thread():
        a = _widened(sources, spec.a, work, "a")
        b = _widened(sources, spec.b, work, "b")
    left, right = (b, a) if spec.kind == "linear" else (a.T, b.T)
    per_band = band_rows(cols)
    row_bytes = cols * native.itemsize
    per_chunk = max(1, chunk_bytes // row_bytes // per_band) * per_band  # whole bands
    staging = work.get("staging", min(rows, per_chunk) * row_bytes, "uint8")
    band = work.get("band", min(rows, per_band) * cols, "float32")
    for first in range(0, rows, per_chunk):
        n = min(per_chunk, rows - first)
        raw = staging[: n * row_bytes]
        reader.read_into(info, memoryview(raw.numpy()).cast("B"), first * row_bytes)
        src = raw.view(native).view(n, cols)
        # a fresh buffer per chunk: chunks wait in the writer's queue while the next are made
        piece = torch.empty(n, cols, dtype=native)
        with _one_thread(), torch.no_grad():
            for i in range(0, n, per_band):
                j = min(n, i + per_band)
                f = band[: (j - i) * cols].view(j - i, cols)
                f.copy_(src[i:j])
                f.addmm_(left[first + i : first + j], right, alpha=spec.scaling)
                piece[i:j].copy_(f)
        yield tensor_bytes(piece)
