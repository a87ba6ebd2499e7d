"""DeepSpeed ZeRO checkpoints (stages 1-3): the fp32 master weights, read without DeepSpeed.

A DeepSpeed checkpoint folder holds ``latest`` (the tag of the last save) and ``TAG/`` with the
model states (names, shapes, buffers, ``shared_params``) and, per rank, the optimizer states
whose flat fp32 partitions hold the master weights. Both kinds of file are ``torch.save``
archives; they are listed with an allow-list (inert stand-ins for ``LossScaler``,
``ZeroStageEnum`` and ``fragment_address``; nothing is executed) and never loaded: every
parameter becomes the byte ranges of the partitions it spans, in order, exactly as DeepSpeed's
``get_fp32_state_dict_from_zero_checkpoint`` concatenates them. Adam's moments are listed as not
read and never touched.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..dtypes import DTYPES, numel_of
from ..errors import CheckpointNotFoundError, CorruptCheckpointError, UnsupportedFormatError
from .dcp import describe_not_read
from .tensorio import Part, TensorInfo
from .torch_zip import LazyTensor, inert, lazy_tensors, list_archive

LATEST = "latest"
FLOAT = ("F16", "BF16", "F32", "F64")


def _stage(value: Any = 0) -> int:
    return int(value)


_LS = "deepspeed.runtime.fp16.loss_scaler"
ALLOWED: dict[tuple[str, str], Any] = {
    (_LS, "LossScaler"): inert("LossScaler"),
    (_LS, "DynamicLossScaler"): inert("DynamicLossScaler"),
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"): _stage,
    ("deepspeed.utils.tensor_fragment", "fragment_address"): inert("fragment_address"),
    ("deepspeed.runtime.zero.offload_config", "OffloadDeviceEnum"): inert("OffloadDeviceEnum"),
}


def is_deepspeed(path: Path) -> bool:
    """A folder holding ``latest``, or a tag folder holding ZeRO model and optimizer states."""
    if not path.is_dir():
        return False
    if (path / LATEST).is_file():
        return True
    names = [p.name for p in path.iterdir()]
    return any(n.endswith("_optim_states.pt") for n in names) and any(
        n.endswith("_model_states.pt") for n in names
    )


def _natural(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def tag_folder(path: Path) -> Path:
    latest = path / LATEST
    if not latest.is_file():
        return path
    tag = latest.read_text(encoding="utf-8", errors="replace").strip()
    if not tag or "/" in tag or tag in (".", ".."):
        raise CorruptCheckpointError(
            f"{LATEST} does not name a tag ({tag[:60]!r})",
            str(latest),
            "write the tag folder's name into it, or give the tag folder itself",
        )
    folder = path / tag
    if not folder.is_dir():
        raise CheckpointNotFoundError(
            f"{LATEST} names tag {tag!r}, which is not in the folder",
            str(latest),
            "copy the tag folder too, or give an existing tag folder itself",
        )
    return folder


@dataclass
class DeepSpeedListing:
    tensors: list[TensorInfo]
    files: list[Path]
    aliases: dict[str, str]
    folder: Path
    stage: int
    ranks: int
    not_read: list[str] = field(default_factory=list)


def _files(folder: Path, suffix: str) -> list[Path]:
    found = sorted(
        (p for p in folder.iterdir() if p.name.endswith(suffix)), key=lambda p: _natural(p.name)
    )
    if any("mp_rank_01" in p.name for p in found):
        raise UnsupportedFormatError(
            "the checkpoint is split by tensor parallelism (mp_rank_01...)",
            str(folder),
            "merge the tensor-parallel ranks with DeepSpeed's universal checkpoint tools first",
        )
    return found


def _bad(message: str, where: Path | str) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        message, str(where), "the checkpoint is incomplete or corrupt; copy it again"
    )


@dataclass
class _Flat:
    """A flat sequence of elements spread over storages: (file, byte offset, numel) segments."""

    segments: list[tuple[str, int, int]]
    dtype: str

    @property
    def numel(self) -> int:
        return sum(n for _, _, n in self.segments)

    def parts(self, start: int, count: int) -> list[Part]:
        item = DTYPES[self.dtype].itemsize
        out: list[Part] = []
        pos = 0
        for file, offset, n in self.segments:
            lo, hi = max(start, pos), min(start + count, pos + n)
            if lo < hi:
                out.append(Part(file, offset + (lo - pos) * item, (hi - lo) * item))
            pos += n
        return out


def _flat(tensors: Sequence[Any], where: Path) -> _Flat:
    segments = []
    dtype = None
    for t in tensors:
        if not isinstance(t, LazyTensor) or len(t.shape) != 1 or not t.contiguous:
            raise _bad("a flat fp32 partition is not a flat tensor", where)
        if dtype is not None and t.dtype != dtype:
            raise _bad("flat partitions of different dtypes", where)
        dtype = t.dtype
        segments.append((str(where), t.offset, t.shape[0]))
    return _Flat(segments, dtype or "F32")


def _join(flats: Sequence[_Flat]) -> _Flat:
    return _Flat([s for f in flats for s in f.segments], flats[0].dtype if flats else "F32")


def _take(parts: list[Part], nbytes: int) -> tuple[Part, ...]:
    """The first ``nbytes`` of ``parts`` (the padding at the end dropped)."""
    out = []
    for p in parts:
        if nbytes <= 0:
            break
        out.append(p if p.nbytes <= nbytes else Part(p.file, p.offset, nbytes))
        nbytes -= out[-1].nbytes
    return tuple(out)


def list_deepspeed(path: Path) -> DeepSpeedListing:
    folder = tag_folder(path)
    model_files = _files(folder, "_model_states.pt")
    optim_files = _files(folder, "_optim_states.pt")
    if not model_files or not optim_files:
        raise CheckpointNotFoundError(
            "no ZeRO model states and optimizer states in the folder",
            str(folder),
            "give the folder holding 'latest' or a tag folder such as global_step100/",
        )
    models = [list_archive(f, ALLOWED) for f in model_files]
    optims = [list_archive(f, ALLOWED) for f in optim_files]
    m0 = models[0]
    if not isinstance(m0, dict) or "param_shapes" not in m0 or "buffer_names" not in m0:
        raise _bad("not a ZeRO model states file (no param_shapes)", model_files[0])
    osds = []
    for f, o in zip(optim_files, optims, strict=True):
        osd = o.get("optimizer_state_dict") if isinstance(o, dict) else None
        if not isinstance(osd, dict) or "zero_stage" not in osd:
            raise _bad("not a ZeRO optimizer states file (no zero_stage)", f)
        osds.append(osd)
    stage = int(osds[0]["zero_stage"])
    world = osds[0].get("partition_count", len(optim_files))
    world = max(world) if isinstance(world, list | tuple) else int(world)
    if world != len(optim_files):
        raise CheckpointNotFoundError(
            f"the run had {world} ranks but {len(optim_files)} optimizer state files are here",
            str(folder),
            "copy every rank's *_optim_states.pt file into the tag folder",
        )
    param_shapes = m0["param_shapes"]
    if isinstance(param_shapes, dict):
        param_shapes = [param_shapes]
    infos: dict[str, TensorInfo] = {}
    where = model_files[0]

    # buffers: from the model states, widened to fp32 as DeepSpeed's converter does
    module = m0.get("module") or {}
    for name in m0.get("buffer_names") or []:
        t = module.get(name)
        if not isinstance(t, LazyTensor):
            continue
        infos[name] = _whole(name, t, where, widen=True)

    # frozen parameters: stored whole (stage 1/2) or partitioned like the rest (stage 3)
    frozen = m0.get("frozen_param_shapes") or {}
    for name, shape in frozen.items():
        shape = tuple(int(x) for x in shape)
        if stage <= 2:
            t = (m0.get("frozen_param_fragments") or {}).get(name)
            if not isinstance(t, LazyTensor):
                raise _bad(f"frozen parameter {name!r} has no stored values", where)
            infos[name] = _whole(name, t, where, widen=False, shape=shape)
        else:
            pieces = [(m.get("frozen_param_fragments") or {}).get(name) for m in models]
            flat = _join([_flat([p], f) for p, f in zip(pieces, model_files, strict=True)])
            item = DTYPES[flat.dtype].itemsize
            n = numel_of(shape)
            parts = _take(flat.parts(0, flat.numel), n * item)
            infos[name] = TensorInfo(
                name, flat.dtype, shape, n * item, parts[0].file, None, parts=parts
            )

    trainable = _trainable(stage, world, param_shapes, osds, optim_files, folder)
    infos.update(trainable)

    aliases: dict[str, str] = {}
    for alias, canonical in (m0.get("shared_params") or {}).items():
        if canonical in infos and alias not in infos:
            aliases[str(alias)] = str(canonical)
    # stored in the model's state_dict order where the model states say it
    order = [n for n in module if n in infos]
    order += [n for n in infos if n not in set(order)]
    tensors = [infos[n] for n in order]
    files = sorted(
        {Path(p.file) for t in tensors for p in t.parts} | {Path(t.file) for t in tensors}
    )
    moments = [
        t
        for osd in osds
        for t in lazy_tensors(osd.get("optimizer_state_dict") or osd.get("base_optimizer_state"))
    ]
    not_read: dict[str, list[int]] = {"optimizer state": [t.nbytes for t in moments]}
    if m0.get("lr_scheduler"):
        not_read["lr_scheduler"] = []
    if stage <= 2 and any(isinstance(module.get(n), LazyTensor) for n in trainable):
        not_read["module weights in the training dtype"] = []
    return DeepSpeedListing(
        tensors=tensors,
        files=files,
        aliases=dict(sorted(aliases.items())),  # the owner of the storage stays canonical
        folder=folder,
        stage=stage,
        ranks=world,
        not_read=describe_not_read(not_read),
    )


def _whole(
    name: str, t: LazyTensor, where: Path, widen: bool, shape: tuple[int, ...] | None = None
) -> TensorInfo:
    if not t.contiguous:
        raise UnsupportedFormatError(
            f"tensor {name!r} is stored non-contiguous", str(where), "save it contiguous"
        )
    shape = tuple(t.shape) if shape is None else shape
    if widen and t.dtype in FLOAT and t.dtype != "F32":
        nbytes = numel_of(shape) * 4
        part = Part(str(where), t.offset, t.nbytes, t.dtype)
        return TensorInfo(name, "F32", shape, nbytes, str(where), None, parts=(part,))
    return TensorInfo(name, t.dtype, shape, t.nbytes, str(where), t.offset)


def _trainable(
    stage: int,
    world: int,
    param_shapes: list[dict[str, Any]],
    osds: list[dict[str, Any]],
    optim_files: list[Path],
    folder: Path,
) -> dict[str, TensorInfo]:
    out: dict[str, TensorInfo] = {}
    key = "single_partition_of_fp32_groups" if stage <= 2 else "fp32_flat_groups"
    groups = []
    for f, osd in zip(optim_files, osds, strict=True):
        g = osd.get(key)
        if not isinstance(g, list | tuple):
            raise _bad(f"no {key} in the optimizer states", f)
        groups.append([_flat([t], f) for t in g])
    if stage <= 2:
        paddings = osds[0].get("param_alignment_paddings")
        align = 2 * world
        for gi, shapes in enumerate(param_shapes):
            flat = _join([groups[r][gi] for r in range(world)])
            item = DTYPES[flat.dtype].itemsize
            offset = 0
            for pi, (name, shape) in enumerate(shapes.items()):
                shape = tuple(int(x) for x in shape)
                n = numel_of(shape)
                if offset + n > flat.numel:
                    raise _bad(f"the partitions end before parameter {name!r}", folder)
                pieces = tuple(flat.parts(offset, n))
                out[name] = TensorInfo(
                    name,
                    flat.dtype,
                    shape,
                    n * item,
                    pieces[0].file if pieces else str(folder),
                    None,
                    parts=pieces,
                )
                offset += n + (int(paddings[gi][pi]) if paddings is not None else 0)
            if align * math.ceil(offset / align) != align * math.ceil(flat.numel / align):
                raise _bad(f"consumed {offset} elements of {flat.numel} in group {gi}", folder)
        return out
    merged = {name: shape for shapes in param_shapes for name, shape in shapes.items()}
    ranks = [_join(groups[r]) for r in range(world)]
    item = DTYPES[ranks[0].dtype].itemsize
    offset = 0
    for name, shape in merged.items():
        shape = tuple(int(x) for x in shape)
        n = numel_of(shape)
        per = math.ceil(n / world)
        parts: list[Part] = []
        for r in range(world):
            if offset + per > ranks[r].numel:
                raise _bad(f"rank {r}'s partition ends before parameter {name!r}", optim_files[r])
            parts.extend(ranks[r].parts(offset, per))
        kept = _take(parts, n * item)
        out[name] = TensorInfo(
            name,
            ranks[0].dtype,
            shape,
            n * item,
            kept[0].file if kept else str(folder),
            None,
            parts=kept,
        )
        offset += per
    if offset != ranks[0].numel:
        raise _bad(f"consumed {offset * world} elements of {ranks[0].numel * world}", folder)
    return out
