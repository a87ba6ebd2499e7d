"""PyTorch Distributed Checkpoint (DCP) folders, read without torch.

A DCP folder holds a pickled ``.metadata`` and one ``__R_N.distcp`` file per rank (FSDP2,
torchtitan, accelerate's FSDP ``save_state``, Megatron's ``torch_dist``). ``.metadata`` is read
with an allow-list of inert stand-ins for DCP's own classes (nothing in it is executed); it says,
for every tensor, its dtype, shape and chunks, and where each chunk lies (a byte range of a rank
file that is itself a ``torch.save`` archive of the chunk). The model's tensors are chosen by
their real key paths (``planner_data``: names contain dots); optimizer and other training state
is listed as not read and never opened.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..dtypes import DTYPES, numel_of
from ..errors import CheckpointNotFoundError, CorruptCheckpointError, UnsupportedFormatError
from .tensorio import Block, Part, TensorInfo
from .torch_zip import TORCH_DTYPES, Inert, _Marker, inert, list_archive, restricted_loads

METADATA = ".metadata"
# top-level entries that are training state, not the model
TRAINING_STATE = (
    "optim",
    "optimizer",
    "optimizers",
    "optimizer_state",
    "lr_scheduler",
    "lr_schedulers",
    "scheduler",
    "dataloader",
    "train_state",
    "rng",
    "rng_state",
    "trainer",
    "extra_state",
)
MODEL_KEYS = ("model", "module")


class _Struct(Inert):
    """A DCP dataclass: its fields, set from the pickle's state."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.state = state


class _TensorProperties(_Struct):
    def __setstate__(self, state: Any) -> None:
        # TensorProperties pickles (dtype, layout, requires_grad, memory_format, pin_memory)
        if isinstance(state, tuple) and len(state) == 5:
            self.dtype = state[0]
        else:
            super().__setstate__(state)


def _struct(name: str) -> type:
    return type(name, (_Struct,), {})


def _path(*parts: Any) -> str:
    return "/".join(str(p) for p in parts)


def _layout(name: Any) -> Any:
    return _Marker(str(name))


_META = "torch.distributed.checkpoint.metadata"
ALLOWED: dict[tuple[str, str], Any] = {
    (_META, "Metadata"): _struct("Metadata"),
    (_META, "TensorStorageMetadata"): _struct("TensorStorageMetadata"),
    (_META, "BytesStorageMetadata"): _struct("BytesStorageMetadata"),
    (_META, "ChunkStorageMetadata"): _struct("ChunkStorageMetadata"),
    (_META, "MetadataIndex"): _struct("MetadataIndex"),
    (_META, "StorageMeta"): _struct("StorageMeta"),
    (_META, "TensorProperties"): _TensorProperties,
    (_META, "_MEM_FORMAT_ENCODING"): inert("_MEM_FORMAT_ENCODING"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"): _struct("_StorageInfo"),
    ("torch.serialization", "_get_layout"): _layout,
    ("torch", "Size"): tuple,
    ("pathlib", "PosixPath"): _path,
    ("pathlib", "PurePosixPath"): _path,
    ("pathlib", "WindowsPath"): _path,
    **{("torch", n): _Marker(d) for n, d in TORCH_DTYPES.items()},
}


def is_dcp(path: Path) -> bool:
    return path.is_dir() and (path / METADATA).is_file()


@dataclass
class DcpListing:
    tensors: list[TensorInfo]
    files: list[Path]
    not_read: list[str] = field(default_factory=list)
    ranks: int = 0


def _bad(
    message: str,
    where: Path | str,
    hint: str = "the checkpoint is incomplete or corrupt; "
    "copy it again from where the run wrote it",
) -> CorruptCheckpointError:
    return CorruptCheckpointError(message, str(where), hint)


def read_metadata(folder: Path) -> Any:
    where = folder / METADATA
    meta = restricted_loads(where.read_bytes(), str(where), ALLOWED)
    for attr in ("state_dict_metadata", "storage_data"):
        if not isinstance(getattr(meta, attr, None), dict):
            raise _bad(f"{METADATA} has no {attr}", where)
    return meta


def _path_of(meta: Any, key: str) -> tuple[str, ...]:
    planner = getattr(meta, "planner_data", None)
    path = planner.get(key) if isinstance(planner, dict) else None
    if isinstance(path, list | tuple) and path:
        return tuple(str(p) for p in path)
    return tuple(key.split("."))


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} B"  # pragma: no cover


def describe_not_read(groups: dict[str, list[int]]) -> list[str]:
    """``optimizer state (126 tensors, 1.2 MB)``, ``lr_scheduler``: one entry per top-level
    name, its tensors counted (a list of tensor byte sizes)."""
    out = []
    for name, sizes in groups.items():
        label = "optimizer state" if name.startswith("optim") else name
        if sizes:
            n = len(sizes)
            out.append(f"{label} ({n} tensor{'s' * (n != 1)}, {_human(sum(sizes))})")
        else:
            out.append(label)
    return out


def list_dcp(folder: Path) -> DcpListing:
    """The model tensors of a DCP folder, named as the model's ``state_dict()`` named them."""
    meta = read_metadata(folder)
    entries = meta.state_dict_metadata
    paths = {key: _path_of(meta, key) for key in entries}
    tops = {p[0] for p in paths.values()}
    model_top = next((k for k in MODEL_KEYS if k in tops), None)
    if model_top is not None and len(tops) > 1 and not tops - {model_top, *TRAINING_STATE}:
        pass  # the usual {"model": ..., "optim": ...}
    elif model_top is not None and tops == {model_top}:
        pass
    else:
        model_top = None  # torchtitan: model keys at the top level
    chunks_of: dict[str, list[tuple[tuple[int, ...], Any]]] = {}
    for index, info in meta.storage_data.items():
        fqn = str(getattr(index, "fqn", ""))
        chunks_of.setdefault(fqn, []).append((tuple(getattr(index, "offset", ()) or ()), info))
    tensors: list[TensorInfo] = []
    not_read: dict[str, list[int]] = {}
    files: set[str] = set()
    for key, entry in entries.items():
        path = paths[key]
        is_tensor = type(entry).__name__ == "TensorStorageMetadata"
        if model_top is not None:
            inside = path[0] == model_top and len(path) > 1
            name = ".".join(path[1:])
        else:
            inside = path[0] not in TRAINING_STATE
            name = ".".join(path)
        if not inside or not is_tensor:
            sizes = not_read.setdefault(path[0], [])
            if is_tensor:
                sizes.append(_entry_nbytes(entry))
            elif inside:
                not_read[path[0]] = sizes  # a non-tensor model entry (extra state): named
            continue
        info = _tensor(folder, key, name, entry, chunks_of.get(key, []))
        tensors.append(info)
        files.update(p.file for p in info.parts)
        files.update(b.file for b in info.blocks)
    if not tensors:
        raise _bad(
            "the distributed checkpoint holds no model tensors (top-level entries: "
            + ", ".join(sorted(tops)[:8])
            + ")",
            folder / METADATA,
            "give the folder a model was saved into",
        )
    ranks = sorted({f for f in os.listdir(folder) if f.endswith(".distcp")})
    return DcpListing(
        tensors=tensors,
        files=[Path(f) for f in sorted(files)],
        not_read=describe_not_read(not_read),
        ranks=len(ranks),
    )


def _dtype(entry: Any, key: str, where: Path) -> str:
    props = getattr(entry, "properties", None)
    dtype = getattr(props, "dtype", None)
    if not isinstance(dtype, _Marker) or str(dtype) not in DTYPES:
        raise UnsupportedFormatError(
            f"tensor {key!r} has a dtype safetensors cannot store ({dtype})",
            str(where),
            "cast it in the training code before saving",
        )
    return str(dtype)


def _entry_nbytes(entry: Any) -> int:
    try:
        dtype = str(entry.properties.dtype)
        return numel_of(tuple(entry.size)) * DTYPES[dtype].itemsize
    except (AttributeError, KeyError, TypeError):
        return 0


def _tensor(
    folder: Path, key: str, name: str, entry: Any, stored: Sequence[tuple[tuple[int, ...], Any]]
) -> TensorInfo:
    where = folder / METADATA
    dtype = _dtype(entry, key, where)
    shape = tuple(int(x) for x in entry.size)
    item = DTYPES[dtype].itemsize
    by_offset = {offs: info for offs, info in stored}
    blocks: list[Block] = []
    for chunk in entry.chunks:
        offs = tuple(int(x) for x in chunk.offsets)
        sizes = tuple(int(x) for x in chunk.sizes)
        info = by_offset.get(offs)
        if info is None:
            raise _bad(f"chunk {list(offs)} of tensor {key!r} is not stored", where)
        if getattr(info, "transform_descriptors", None):
            raise UnsupportedFormatError(
                f"tensor {key!r} is stored with transforms ({info.transform_descriptors})",
                str(where),
                "save the checkpoint without compression or other storage transforms",
            )
        file = folder / str(info.relative_path)
        if not file.is_file():
            raise CheckpointNotFoundError(
                f"rank file {info.relative_path} is missing (it holds tensor {key!r})",
                str(folder),
                "copy every __R_N.distcp file of the checkpoint into the folder",
            )
        blocks.append(_block(file, int(info.offset), int(info.length), key, sizes, dtype, offs))
    _check_cover(key, shape, blocks, where)
    nbytes = numel_of(shape) * item
    first = blocks[0].file if blocks else str(folder)
    if all(b.sizes[1:] == shape[1:] for b in blocks):
        # row chunks (FSDP's Shard(0)): the tensor is the chunks back to back
        ordered = sorted(blocks, key=lambda b: b.offsets[:1])
        parts = tuple(
            Part(b.file, b.offset, numel_of(b.sizes) * item) for b in ordered if numel_of(b.sizes)
        )
        return TensorInfo(name, dtype, shape, nbytes, first, None, key, parts=parts)
    return TensorInfo(name, dtype, shape, nbytes, first, None, key, blocks=tuple(blocks))


def _block(
    file: Path,
    start: int,
    length: int,
    key: str,
    sizes: tuple[int, ...],
    dtype: str,
    offs: tuple[int, ...],
) -> Block:
    """Where a chunk's bytes are: its torch archive (a window of the rank file) lists them."""
    where = f"{file} (tensor {key!r})"
    if start + length > file.stat().st_size:
        raise _bad(
            f"rank file {file.name} ends before chunk {list(offs)} of tensor {key!r}",
            file,
            "the rank file is truncated; copy it again from where the run wrote it",
        )
    obj = list_archive(file, start=start, length=length, where=where)
    if type(obj).__name__ != "LazyTensor":
        raise _bad(f"chunk {list(offs)} of tensor {key!r} is not a tensor", file)
    if tuple(obj.shape) != sizes or obj.dtype != dtype or not obj.contiguous:
        raise _bad(
            f"chunk {list(offs)} of tensor {key!r} is {obj.dtype}{list(obj.shape)}, "
            f"the metadata says {dtype}{list(sizes)}",
            file,
        )
    return Block(str(file), obj.offset, offs, sizes)


def _check_cover(key: str, shape: tuple[int, ...], blocks: list[Block], where: Path) -> None:
    """The chunks tile the tensor: inside it, no two overlap, their volumes add up."""
    for b in blocks:
        if len(b.offsets) != len(shape) or any(
            o < 0 or o + n > s for o, n, s in zip(b.offsets, b.sizes, shape, strict=True)
        ):
            raise _bad(f"chunk {list(b.offsets)} lies outside tensor {key!r} {list(shape)}", where)
    for i, a in enumerate(blocks):
        for b in blocks[i + 1 :]:
            if (
                all(
                    ao < bo + bn and bo < ao + an
                    for ao, an, bo, bn in zip(a.offsets, a.sizes, b.offsets, b.sizes, strict=True)
                )
                and numel_of(a.sizes)
                and numel_of(b.sizes)
            ):
                raise _bad(f"chunks of tensor {key!r} overlap", where)
    if sum(numel_of(b.sizes) for b in blocks) != numel_of(shape):
        raise _bad(f"the chunks of tensor {key!r} do not cover it", where)
