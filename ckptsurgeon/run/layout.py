"""The layout of the output files, a pure function of the plan and the options: which tensors
go into which file (``--max-shard-size``: a size, ``source`` for the source's files, or ``auto``,
the default: the source's safetensors files, each split past 5GB), in what order, and
where each file's data buffer starts so that tensors copied unchanged keep their source offsets
modulo the clone block. The same layout on every file system: only the writing differs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from ..dtypes import DTYPES
from ..formats.tensorio import TensorInfo
from ..libc import CLONE_BLOCK
from ..plan import Copy, PlannedTensor
from ..sizes import parse_size
from .destination import is_single_file

SHARD_BYTES = 5 * 10**9  # the largest file by default, as transformers' save_pretrained
SOURCE_SHARDS = 0  # --max-shard-size source: one output file per source file
# --max-shard-size auto, the default: at most SHARD_BYTES per file, and never two of a sharded
# safetensors source's files in one output file, so that each file's copied tensors can keep
# their source offsets modulo the clone block (one header start fits one source file)
AUTO_SHARDS = -1
DEFAULT_MAX_SHARD_SIZE = AUTO_SHARDS
KEYWORDS = {"source": SOURCE_SHARDS, "auto": AUTO_SHARDS}


def shard_limit(value: int | str) -> int:
    """``--max-shard-size``: bytes, a size such as ``"5GB"``, ``"source"`` (the source's files:
    :data:`SOURCE_SHARDS`) or ``"auto"`` (:data:`AUTO_SHARDS`)."""
    if isinstance(value, str):
        word = value.strip().lower()
        if word in KEYWORDS:
            return KEYWORDS[word]
        try:
            return parse_size(value)
        except ValueError as exc:  # the sizes' own message, and the words this option takes
            raise ValueError(f"{exc}, or 'auto' (the default) or 'source'") from None
    return value


@dataclass(frozen=True)
class OutTensor:
    """A tensor to write: its header fields. Bytes come from the writer's ``emit`` callback."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    late: bool = False  # bytes are computed (drawn, cast, combined), not copied
    # copied unchanged from this (file, byte offset): laid out so that its blocks can be shared
    source: tuple[str, int] | None = None
    home: str | None = None  # the source file it comes from (--max-shard-size source)


def plan_shards(sizes: Sequence[tuple[str, int]], max_shard_size: int) -> list[list[str]]:
    """Split tensor names into shards, in order, each at most ``max_shard_size`` bytes.

    A pure function over sizes, as transformers does it: a tensor that would push the current
    shard past the limit starts a new shard; a tensor larger than the limit gets a shard alone.

    >>> plan_shards([("a", 4), ("b", 4), ("c", 4)], 8)
    [['a', 'b'], ['c']]
    """
    shards: list[list[str]] = []
    current: list[str] = []
    current_size = 0
    for name, size in sizes:
        if current and current_size + size > max_shard_size:
            shards.append(current)
            current, current_size = [], 0
        current.append(name)
        current_size += size
    if current or not shards:
        shards.append(current)
    return shards


def shard_filename(i: int, n: int) -> str:
    return f"model-{i:05d}-of-{n:05d}.safetensors"


ANCHOR_BYTES = 64 << 10  # copied tensors this large are worth keeping clonable
SMALL_BYTES = 64 << 10  # tensors this small may move to fill a gap (biases, norms)
CANDIDATES = 64  # small tensors considered per gap


def data_order(tensors: Sequence[OutTensor]) -> list[OutTensor]:
    """Order tensors in a file's data buffer: widest dtype first, so every tensor is aligned;
    within a dtype, in the plan's order, which is the source's: computed tensors stay where the
    tensors they replace were, so the copied runs around them keep their offsets (and can be
    cloned, see :func:`data_start`). Where a tensor left out before a large copied one would
    shift it off its source offset modulo the block, small tensors from later in the file fill
    the gap (:func:`_fill_gaps`)."""
    indexed = list(enumerate(tensors))
    indexed.sort(key=lambda it: (-DTYPES[it[1].dtype].bits, it[0]))
    ordered = [t for _, t in indexed]
    start = data_start(ordered)
    return ordered if start is None else _fill_gaps(ordered, start[0])


def _fill_gaps(ordered: list[OutTensor], start: int) -> list[OutTensor]:
    """Keep each large copied tensor at its source offset modulo the block: the small tensors
    (biases, norms: same dtype width, whole multiples of 8 bytes) before it are placed as in the
    source when that aligns it, else a set of small tensors, waiting or from later in the file,
    whose sizes add up to the shift (a subset sum modulo the block); the others wait for the
    next large tensor. A pure function of the layout; a gap no set fills is left (that tensor
    is then copied, not cloned)."""

    def small(u: OutTensor, bits: int) -> bool:
        return u.nbytes < SMALL_BYTES and u.nbytes % 8 == 0 and DTYPES[u.dtype].bits == bits

    out: list[OutTensor] = []
    pending: list[OutTensor] = []
    placed: set[str] = set()
    pos = start

    def place(items: Sequence[OutTensor]) -> None:
        nonlocal pos
        for u in items:
            out.append(u)
            placed.add(u.name)
            pos += u.nbytes

    for i, t in enumerate(ordered):
        if t.name in placed:
            continue
        bits = DTYPES[t.dtype].bits
        if pending and DTYPES[pending[0].dtype].bits != bits:
            place(pending)  # a narrower dtype starts: the wider ones go first
            pending = []
        if small(t, bits):
            pending.append(t)
            continue
        if t.source is not None and t.nbytes >= ANCHOR_BYTES:
            need = (t.source[1] - pos) % CLONE_BLOCK
            if sum(u.nbytes for u in pending) % CLONE_BLOCK != need:
                later = [u for u in ordered[i + 1 :] if u.name not in placed and small(u, bits)]
                chosen = _subset_sum([*pending, *later][: len(pending) + CANDIDATES], need)
                if chosen or need == 0:
                    place(chosen)
                    pending = [u for u in pending if u.name not in placed]
                    place([t])
                    continue
        place(pending)
        pending = []
        place([t])
    place(pending)
    return out


def _subset_sum(pool: list[OutTensor], need: int) -> list[OutTensor]:
    """Tensors of ``pool`` (in pool order) whose sizes add up to ``need`` modulo the block, the
    first such set found; [] when none does."""
    reached: dict[int, tuple[int, int]] = {0: (-1, -1)}  # residue -> (item, previous residue)
    for k, u in enumerate(pool):
        step = u.nbytes % CLONE_BLOCK
        for residue in list(reached):
            new = (residue + step) % CLONE_BLOCK
            if new not in reached:
                reached[new] = (k, residue)
        if need in reached:
            break
    if need not in reached:
        return []
    picked: list[int] = []
    residue = need
    while residue:
        k, residue = reached[residue]
        picked.append(k)
    return [pool[k] for k in sorted(picked)]


def data_start(ordered: Sequence[OutTensor]) -> tuple[int, int] | None:
    """Where a file's data buffer should start, modulo the clone block: the offset at which the
    most copied bytes start at the same offset modulo the block as in their source, so that
    their blocks can be shared (:func:`~ckptsurgeon.libc.clone_range`). A pure function of the
    layout: the same bytes on every file system. None when nothing is copied."""
    weight: dict[int, int] = {}
    pos = 0
    for t in ordered:
        if t.source is not None and t.nbytes >= CLONE_BLOCK:
            shift = (t.source[1] - pos) % CLONE_BLOCK
            weight[shift] = weight.get(shift, 0) + t.nbytes
        pos += t.nbytes
    if not weight:
        return None
    return max(sorted(weight), key=weight.__getitem__), CLONE_BLOCK


def shard_groups(
    tensors: Sequence[OutTensor], dest: str | os.PathLike[str], max_shard_size: int
) -> list[list[OutTensor]]:
    """The files :func:`write_checkpoint` writes for ``dest``: one group per file, in order.
    With :data:`SOURCE_SHARDS`, one file per source file (a tensor with no source file of its
    own joins its neighbour's). With :data:`AUTO_SHARDS`, the same for a sharded safetensors
    source, each file split past 5GB; any other source is split past 5GB alone."""
    if is_single_file(dest):
        return [list(tensors)]
    homes: dict[str | None, list[OutTensor]] = {}
    last: str | None = None
    for t in tensors:
        last = t.home if t.home is not None else last
        homes.setdefault(last, []).append(t)
    if max_shard_size == SOURCE_SHARDS:
        return list(homes.values()) or [[]]
    groups = [list(tensors)]
    if max_shard_size == AUTO_SHARDS:
        max_shard_size = SHARD_BYTES
        if len(homes) > 1 and all(str(h).endswith(".safetensors") for h in homes):
            groups = list(homes.values())
    by_name = {t.name: t for t in tensors}
    return [
        [by_name[n] for n in shard]
        for group in groups
        for shard in plan_shards([(t.name, t.nbytes) for t in group], max_shard_size)
    ]


def emission_order(
    tensors: Sequence[OutTensor], dest: str | os.PathLike[str], max_shard_size: int
) -> list[list[OutTensor]]:
    """The order in which :func:`write_checkpoint` will call ``emit``: file by file (one list
    per file), each in :func:`data_order`. Lets a caller prepare bytes ahead (e.g. draw random
    numbers while the kernel copies kept tensors) and plan copies across neighbours."""
    return [data_order(group) for group in shard_groups(tensors, dest, max_shard_size)]


def out_tensor(p: PlannedTensor, infos: dict[str, TensorInfo]) -> OutTensor:
    """What the writer needs of a planned tensor: header fields, and where a copied tensor's
    bytes lie in its source file (to lay it out for clones) or which source file it comes from
    (``--max-shard-size source``)."""
    origin = infos.get(getattr(p.source, "tensor", p.name)) or infos.get(p.name)
    home = origin.file if origin is not None else None
    source = None
    plain = origin is not None and not origin.parts and not origin.blocks
    if not p.computed and plain and origin is not None and origin.offset is not None:
        source = (origin.file, origin.offset)
    return OutTensor(p.name, p.dtype, p.shape, p.nbytes, p.computed, source, home)


def copy_runs(
    files: list[list[OutTensor]],
    planned: dict[str, PlannedTensor],
    infos: dict[str, TensorInfo],
    limit: int,
) -> dict[str, tuple[TensorInfo, int]]:
    """Runs of copied tensors that lie back to back in one source file, in the writer's order:
    each is copied in one kernel call (far fewer calls than tensors; up to ``limit`` bytes per
    run, so that the writer still starts write-back every so often). Keyed by the run's first
    tensor; the value spans the run's bytes, with the run's number of tensors."""
    runs: dict[str, tuple[TensorInfo, int]] = {}

    def source(t: OutTensor) -> TensorInfo | None:
        p = planned[t.name]
        if p.computed:
            return None
        assert isinstance(p.source, Copy)
        info = infos[p.source.tensor]
        return info if info.offset is not None else None

    for ordered in files:
        i = 0
        while i < len(ordered):
            first = source(ordered[i])
            j = i + 1
            if first is not None:
                assert first.offset is not None
                end = first.offset + first.nbytes
                while j < len(ordered) and end - first.offset < limit:
                    nxt = source(ordered[j])
                    if nxt is None or nxt.file != first.file or nxt.offset != end:
                        break
                    end += nxt.nbytes
                    j += 1
                if j - i > 1:
                    span = end - first.offset
                    info = TensorInfo(first.name, "U8", (span,), span, first.file, first.offset)
                    runs[ordered[i].name] = (info, j - i)
            i = j
    return runs
