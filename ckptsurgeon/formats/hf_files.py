"""The Hugging Face weight files: one safetensors file, one torch file, or a sharded index of
either, each opened from its header (safetensors) or allow-listed pickle (torch)."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import CheckpointNotFoundError, CorruptCheckpointError, UnsupportedFormatError
from .opened import TORCH_SUFFIXES, Checkpoint, stamp
from .safetensors import read_header
from .tensorio import TensorInfo


def require_regular_file(p: Path) -> None:
    """Refuse a FIFO, socket or device before opening it (opening a FIFO blocks forever)."""
    mode = os.stat(p).st_mode
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):  # a directory: said by the caller
        kind = (
            "a FIFO"
            if stat.S_ISFIFO(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "a device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "not a regular file"  # pragma: no cover - no other kind of file exists
        )
        raise UnsupportedFormatError(
            f"not a checkpoint file: it is {kind}, which is never opened",
            str(p),
            "give a checkpoint file or model directory",
        )


def open_safetensors(p: Path) -> Checkpoint:
    require_regular_file(p)
    header = read_header(p)
    infos = [
        TensorInfo(e.name, e.dtype, e.shape, e.end - e.begin, str(p), header.data_start + e.begin)
        for e in header.entries
    ]
    return Checkpoint(
        path=p,
        format="safetensors",
        files=[p],
        tensors=infos,
        metadata=header.metadata,
        _stamps={str(p): stamp(p)},
    )


def open_torch(p: Path) -> Checkpoint:
    from .torch_bin import list_torch_file

    require_regular_file(p)
    infos, aliases, notes = list_torch_file(p)
    return Checkpoint(
        path=p,
        format="pytorch",
        files=[p],
        tensors=infos,
        aliases=aliases,
        notes=notes,
        _stamps={str(p): stamp(p)},
    )


def check_shard_name(index: Path, shard: Any) -> str:
    def bad(problem: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(
            f"unsafe or invalid shard name {shard!r}: {problem}",
            str(index),
            "shard names must be plain file names next to the index",
        )

    if not isinstance(shard, str) or not shard:
        raise bad("not a string")
    if shard.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", shard):
        raise bad("absolute path")
    parts = PurePosixPath(shard.replace("\\", "/")).parts
    if ".." in parts:
        raise bad("contains '..'")
    if "\\" in shard or len(parts) != 1:
        raise bad("contains a directory separator")
    return shard


def open_index(index: Path) -> Checkpoint:
    require_regular_file(index)
    try:
        obj = json.loads(index.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptCheckpointError(
            f"index is not valid JSON ({exc})", str(index), "re-export the checkpoint"
        ) from None
    except RecursionError:
        raise CorruptCheckpointError(
            "index is not a checkpoint index (JSON nested too deep)",
            str(index),
            "re-export the checkpoint",
        ) from None
    if not isinstance(obj, dict) or not isinstance(obj.get("weight_map"), dict):
        raise CorruptCheckpointError(
            "index has no 'weight_map' object", str(index), "re-export the checkpoint"
        )
    weight_map: dict[str, Any] = obj["weight_map"]
    is_safe = index.name.endswith(".safetensors.index.json")
    want_ext = ".safetensors" if is_safe else TORCH_SUFFIXES
    shards: list[str] = []
    for shard in weight_map.values():
        check_shard_name(index, shard)
        if shard not in shards:
            shards.append(shard)
    for shard in shards:
        if not shard.endswith(want_ext):
            raise CorruptCheckpointError(
                f"shard {shard!r} has the wrong extension for this index",
                str(index),
                "a .safetensors index must list .safetensors shards, a .bin index .bin shards",
            )
        if not (index.parent / shard).is_file():
            raise CheckpointNotFoundError(
                f"shard {shard!r} listed in the index is missing",
                str(index),
                "download every shard of the checkpoint into the same directory",
            )
    if not shards:
        raise CorruptCheckpointError(
            "index lists no tensors", str(index), "re-export the checkpoint"
        )
    parts = [
        (open_safetensors if is_safe else open_torch)(index.parent / shard)
        for shard in sorted(shards, key=_shard_sort_key)
    ]
    infos: list[TensorInfo] = []
    seen: dict[str, str] = {}
    aliases: dict[str, str] = {}
    notes: list[str] = []
    for shard_name, part in zip(sorted(shards, key=_shard_sort_key), parts, strict=True):
        aliases.update(part.aliases)
        notes.extend(part.notes)
        for info in part.tensors:
            if info.name in seen:
                raise CorruptCheckpointError(
                    f"tensor {info.name!r} is stored in two shards "
                    f"({seen[info.name]}, {shard_name})",
                    str(index),
                    "re-export the checkpoint",
                )
            seen[info.name] = shard_name
            listed = weight_map.get(info.name)
            if listed != shard_name and info.name not in aliases:
                raise CorruptCheckpointError(
                    f"tensor {info.name!r} is in shard {shard_name} but the index "
                    + ("does not list it" if listed is None else f"maps it to {listed}"),
                    str(index),
                    "the index and the shards disagree; re-export the checkpoint",
                )
            infos.append(info)
    for name, shard in weight_map.items():
        if name not in seen:
            raise CorruptCheckpointError(
                f"tensor {name!r} is listed in the index but absent from shard {shard}",
                str(index),
                "the index and the shards disagree; re-download the shard or re-export",
            )
    stamps: dict[str, tuple[int, int]] = {}
    for part in parts:
        stamps.update(part._stamps)
    return Checkpoint(
        path=index,
        format="safetensors" if is_safe else "pytorch",
        files=[index.parent / s for s in sorted(shards, key=_shard_sort_key)],
        tensors=infos,
        metadata=parts[0].metadata if parts else {},
        index_file=index,
        aliases=aliases,
        notes=notes,
        _stamps=stamps,
    )


def _shard_sort_key(name: str) -> tuple[int, str]:
    match = re.search(r"-(\d+)-of-\d+\.", name)
    return (int(match.group(1)) if match else 0, name)
