"""The executor: stream any plan into the writer, every output byte read or generated once.

Tensors copied unchanged go file to file in the kernel (``copy_file_range``). Tensors whose
bytes are computed (generated values, casts) are produced by one background thread, in the order
the writer will ask for them and a bounded number of chunks ahead, so that numpy's work overlaps
the kernel's copies. Values do not depend on this timing.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from ..dtypes import DTYPES, cast_bytes, from_float32, numel_of, to_float
from ..errors import SelectionError
from ..formats.checkpoint import Checkpoint
from ..formats.tensorio import TensorInfo, TensorReader, write_all
from ..pipeline import background, ordered_map
from ..plan import Combine, Copy, Generate, LoraMerge, ModelDraw, Plan, PlannedTensor, Rows
from ..rules.bert import generate
from .destination import is_single_file
from .layout import DEFAULT_MAX_SHARD_SIZE, OutTensor, copy_runs, emission_order, out_tensor
from .writer import KICK_BYTES, WriteResult, write_checkpoint

CHUNK_BYTES = 4 << 20  # of a cast's source: a few of these in flight per core
# computed bytes made ahead of the writer: computed tensors are written after the copied ones of
# their file, so this much is drawn or cast while the kernel copies; memory stays bounded by it
AHEAD_BYTES = 96 << 20


def _nbytes(chunk: bytes | memoryview) -> int:
    return len(chunk) if isinstance(chunk, bytes) else chunk.nbytes


@dataclass(frozen=True)
class Executed:
    written: WriteResult
    notes: tuple[str, ...]  # what only the bytes could tell (values lost to a cast)
    cloned_bytes: int = 0  # bytes whose blocks are shared with the source (not written)


def _whole_elements(
    chunks: Iterator[bytes | memoryview], itemsize: int
) -> Iterator[bytes | memoryview]:
    """Chunks cut at element boundaries (a short read must not split an element); chunks that
    already are, as almost all are, pass through without a copy."""
    rest = b""
    for chunk in chunks:
        if not rest and len(chunk) % itemsize == 0:
            yield chunk
            continue
        data = rest + bytes(chunk)
        cut = len(data) - len(data) % itemsize
        rest = data[cut:]
        if cut:
            yield data[:cut]
    if rest:  # pragma: no cover - sizes are checked when the checkpoint is opened
        raise ValueError("tensor bytes end inside an element")


class _CastCounter:
    def __init__(self) -> None:
        self.overflow: dict[str, int] = {}
        self.flushed: dict[str, int] = {}

    def notes(self) -> list[str]:
        out = []
        for label, counts, what in (
            ("overflowed to Inf", self.overflow, "values too large for the new dtype"),
            ("flushed to zero", self.flushed, "nonzero values too small for the new dtype"),
        ):
            total = sum(counts.values())
            if total:
                worst = ", ".join(f"{n} ({c})" for n, c in sorted(counts.items())[:3])
                out.append(f"cast: {total} {what} {label}, in {len(counts)} tensors: {worst}")
        return out


def _casts(
    p: PlannedTensor,
    chunks: Iterator[bytes | memoryview],
    counter: _CastCounter,
    threads: int | None,
) -> Iterator[bytes | memoryview]:
    """The chunks converted through each dtype of ``p.casts`` in turn, on every core, in order."""
    if not p.casts:
        yield from chunks
        return
    dtypes = [p.native, *p.casts]

    def convert(chunk: bytes | memoryview) -> tuple[bytes | memoryview, int, int]:
        lost_inf = lost_zero = 0
        for src, dst in itertools.pairwise(dtypes):
            chunk, overflow, flushed = cast_bytes(chunk, src, dst)
            lost_inf += overflow
            lost_zero += flushed
        return chunk, lost_inf, lost_zero

    whole = _whole_elements(chunks, DTYPES[p.native].itemsize)
    for data, overflow, flushed in ordered_map(convert, whole, threads):
        if overflow:
            counter.overflow[p.name] = counter.overflow.get(p.name, 0) + overflow
        if flushed:
            counter.flushed[p.name] = counter.flushed.get(p.name, 0) + flushed
        yield data


def _combine(
    p: PlannedTensor,
    spec: Combine,
    sources: Sequence[tuple[dict[str, TensorInfo], TensorReader]],
    plan: Plan,
    threads: int | None,
) -> Iterator[bytes | memoryview]:
    """A tensor from several inputs, a chunk of each at a time: their weighted mean (float64,
    in input order, one rounding) or, ``equal``, the first input's bytes once every input's
    are checked to be the same."""
    import numpy as np

    streams = [sources[i][1].chunks(sources[i][0][name], CHUNK_BYTES) for i, name in spec.inputs]
    labels = [plan.source, *plan.inputs]
    if spec.kind == "equal":
        for chunks in zip(*streams, strict=True):
            for i, chunk in enumerate(chunks[1:], 1):
                if bytes(chunk) != bytes(chunks[0]):
                    raise SelectionError(
                        f"tensor {spec.tensor!r} ({p.native}) differs between the inputs; "
                        "integer and bool tensors are copied and must be equal",
                        f"{labels[0]}, {labels[spec.inputs[i][0]]}",
                        "average checkpoints of one model, or drop the tensor first",
                    )
            yield chunks[0]
        return
    total = sum(spec.weights)
    weights = spec.weights

    def mean(chunks: tuple[bytes | memoryview, ...]) -> bytes | memoryview:
        acc = to_float(chunks[0], p.native)
        if weights[0] != 1.0:
            acc *= weights[0]
        for w, chunk in zip(weights[1:], chunks[1:], strict=True):
            x = to_float(chunk, p.native)
            if w != 1.0:
                x *= w
            acc += x
        acc /= total
        if p.native == "F64":
            return acc.data.cast("B")
        return cast_bytes(acc.astype(np.float64, copy=False).data.cast("B"), "F64", p.native)[0]

    yield from ordered_map(mean, zip(*streams, strict=True), threads)


def _rows(
    p: PlannedTensor, info: TensorInfo, reader: TensorReader, threads: int | None
) -> Iterator[bytes | memoryview]:
    """The first rows of a source tensor, then the new rows (``Rows``), chunk by chunk.

    ``mean`` reads the tensor once first (float64 column sums, memory one row); the new rows
    are that mean rounded to nearest even into the dtype, as every generated value is."""
    import numpy as np

    spec = p.source
    assert isinstance(spec, Rows)
    rows = info.shape[0]
    row_elems = numel_of(info.shape[1:])
    row_bytes = info.nbytes // rows if rows else 0
    want = spec.keep * row_bytes
    for chunk in reader.chunks(info, CHUNK_BYTES):
        if want <= 0:
            break
        piece = chunk[:want] if len(chunk) > want else chunk
        want -= len(piece)
        yield piece
    if not spec.new:
        return
    if spec.fill == "normal":
        assert spec.rule is not None
        shape = (spec.new, *info.shape[1:])
        yield from generate(spec.stream, p.native, shape, spec.rule, spec.seed, threads)
        return
    if spec.fill == "pieces":
        yield from _piece_rows(p, spec, info, reader)
        return
    if spec.fill == "mean":
        row = _mean_row(info, reader).astype(np.float32)
    else:
        row = np.zeros(row_elems, dtype=np.float32)
    per_chunk = max(1, (CHUNK_BYTES // max(row_bytes, 1)))
    for start in range(0, spec.new, per_chunk):
        n = min(per_chunk, spec.new - start)
        yield from_float32(np.tile(row, n), p.native)


def _mean_row(info: TensorInfo, reader: TensorReader) -> Any:
    """The mean of every row of a tensor, float64 (one streaming pass, memory one row)."""
    import numpy as np

    row_elems = numel_of(info.shape[1:])
    sums = np.zeros(row_elems, dtype=np.float64)
    carry = np.zeros(0, dtype=np.float64)
    for chunk in reader.chunks(info, CHUNK_BYTES):
        values = np.concatenate([carry, to_float(chunk, info.dtype)])
        whole = values.size - values.size % max(row_elems, 1)
        sums += values[:whole].reshape(-1, row_elems).sum(axis=0)
        carry = values[whole:]
    return sums / max(info.shape[0], 1)


def _piece_rows(
    p: PlannedTensor, spec: Rows, info: TensorInfo, reader: TensorReader
) -> Iterator[bytes | memoryview]:
    """New rows as the float64 mean of the rows each new token's pieces have (add-tokens),
    rounded once; rows past them (padding) the mean of all rows."""
    import numpy as np

    row_bytes = info.nbytes // info.shape[0]
    mean_all = _mean_row(info, reader) if spec.new > len(spec.pieces) else None
    for i in range(spec.new):
        ids = spec.pieces[i] if i < len(spec.pieces) else ()
        if ids:
            total = np.zeros(numel_of(info.shape[1:]), dtype=np.float64)
            for r in ids:
                buf = bytearray(row_bytes)
                reader.read_into(info, memoryview(buf), r * row_bytes)
                total += to_float(bytes(buf), info.dtype)
            row = total / len(ids)
        else:
            row = mean_all if mean_all is not None else _mean_row(info, reader)
        yield from_float32(row.astype(np.float32), p.native)


def _model_values(
    p: PlannedTensor, draw: ModelDraw, engines: dict[str, Any], plan: Plan
) -> Iterator[bytes | memoryview]:
    """The architecture's own init for one tensor (the meta model is built once per run)."""
    from ..rules.model import ModelInit

    if "model" not in engines:
        engines["model"] = ModelInit.build(plan.config, plan.source)
    values = engines["model"].values(draw.stream, p.shape, draw.seed).reshape(-1)
    step = CHUNK_BYTES // 4
    for start in range(0, values.size, step):
        yield from_float32(values[start : start + step], p.native)


def config_bytes(plan: Plan) -> bytes | None:
    """config.json as edited by the plan (key order kept, save_pretrained's indent), or None."""
    if not plan.config_edits or plan.config is None:
        return None
    return (json.dumps(plan.config, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def execute(
    plan: Plan,
    ckpt: Checkpoint,
    destination: str | os.PathLike[str],
    *,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    inputs: Sequence[Checkpoint] = (),
    extra_files: dict[str, bytes] | None = None,
) -> Executed:
    """Carry out a plan: stream, cast and generate bytes; write, verify and publish.

    ``inputs`` are the checkpoints of ``plan.inputs``, opened (``average``...).
    ``progress(bytes_done_now, total_bytes)`` is called as output bytes are written."""
    planned = {t.name: t for t in plan.tensors}
    infos = {t.name: t for t in ckpt.tensors}
    out = [out_tensor(t, infos) for t in plan.tensors]
    files = emission_order(out, destination, max_shard_size)
    runs = copy_runs(files, planned, infos, KICK_BYTES)
    computed = [planned[t.name] for ordered in files for t in ordered if t.late]
    counter = _CastCounter()
    engines: dict[str, Any] = {}
    notes: list[str] = []
    with ExitStack() as stack:
        reader = stack.enter_context(ckpt.reader())
        # the producer thread reads through its own reader (file handles, torch state)
        side_reader: TensorReader | None = None
        if any(isinstance(p.source, Copy | Rows | Combine | LoraMerge) for p in computed):
            side_reader = stack.enter_context(ckpt.reader())
        sources: list[tuple[dict[str, TensorInfo], TensorReader]] = []
        if inputs and computed:
            assert side_reader is not None
            sources.append((infos, side_reader))
            for other in inputs:
                reader_i = stack.enter_context(other.reader())
                sources.append(({t.name: t for t in other.tensors}, reader_i))

        def produce() -> Iterator[tuple[str, bytes | memoryview]]:
            for p in computed:
                if isinstance(p.source, Generate):
                    g = p.source
                    raw = generate(g.stream, p.native, p.shape, g.rule, g.seed, threads)
                elif isinstance(p.source, ModelDraw):
                    raw = _model_values(p, p.source, engines, plan)
                elif isinstance(p.source, Rows):
                    assert side_reader is not None
                    raw = _rows(p, infos[p.source.tensor], side_reader, threads)
                elif isinstance(p.source, Combine):
                    raw = _combine(p, p.source, sources, plan, threads)
                elif isinstance(p.source, LoraMerge):
                    from .merge import Workspace, merged_bytes

                    work = engines.setdefault("lora", Workspace())
                    raw = merged_bytes(p, p.source, sources, CHUNK_BYTES, work)
                elif p.source.input:  # a tensor of another input (an adapter's modules_to_save)
                    from_infos, from_reader = sources[p.source.input]
                    raw = from_reader.chunks(from_infos[p.source.tensor], CHUNK_BYTES)
                else:
                    assert side_reader is not None
                    raw = side_reader.chunks(infos[p.source.tensor], CHUNK_BYTES)
                for chunk in _casts(p, raw, counter, threads):
                    yield p.name, chunk

        ahead: Iterator[tuple[str, bytes | memoryview]] = (
            background(produce(), budget=AHEAD_BYTES, size=lambda item: _nbytes(item[1]))
            if computed
            else iter(())
        )
        stack.callback(lambda: getattr(ahead, "close", lambda: None)())

        total = sum(t.nbytes for t in out)

        def done(n: int) -> None:
            if progress is not None:
                progress(n, total)

        cloned = 0

        def emit(t: OutTensor, fd: int) -> int:
            nonlocal cloned
            if t.name in runs:  # t and the tensors after it, back to back in the source
                span, count = runs[t.name]
                cloned += reader.clone_to(span, fd)
                done(span.nbytes)
                return count
            p = planned[t.name]
            if not p.computed:
                assert isinstance(p.source, Copy)
                cloned += reader.clone_to(infos[p.source.tensor], fd)
                done(t.nbytes)
                return 1
            remaining = t.nbytes
            while remaining:
                name, chunk = next(ahead)
                if name != t.name:  # pragma: no cover - emission_order and the writer disagree
                    raise RuntimeError(f"writer asked for {t.name!r}, produced {name!r}")
                write_all(fd, chunk)
                n = _nbytes(chunk)
                remaining -= n
                done(n)
            return 1

        config = config_bytes(plan)
        if config is not None and is_single_file(destination):
            notes.append(
                "config.json edits are not written: DEST is a single .safetensors file "
                f"({', '.join(e.key for e in plan.config_edits)})"
            )
            config = None
        written = write_checkpoint(
            ckpt,
            destination,
            out,
            emit,
            plan.metadata(),
            max_shard_size=max_shard_size,
            overwrite=overwrite,
            side_files=plan.side_files,
            replace_files={
                **dict(plan.files),
                **({"config.json": config} if config is not None else {}),
                **(extra_files or {}),
            },
        )
    return Executed(written, (*notes, *counter.notes()), cloned)
