"""Opening a checkpoint: find its weight files, list its tensors, read their bytes.

``open_checkpoint(path)`` accepts a Hugging Face model directory or a single file (safetensors,
a sharded index, a torch ``.bin``/``.pt``/``.pth`` in zip or legacy format) and returns a
:class:`Checkpoint` whose tensor list comes from headers alone for safetensors (torch is not even
imported). Tensor bytes are read later, in chunks, through :meth:`Checkpoint.reader`.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import (
    CheckpointNotFoundError,
    CkptSurgeonError,
    ConfigError,
    CorruptCheckpointError,
    SelectionError,
    UnsupportedFormatError,
)
from .config_json import read_config
from .safetensors import read_header
from .tensorio import (
    SafetensorsReader,
    TensorInfo,
    TensorReader,
    read_error,
    write_all,
)

__all__ = [
    "Checkpoint",
    "TensorInfo",
    "TensorReader",
    "open_checkpoint",
    "read_error",
    "strip_prefixes",
    "write_all",
]

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


@dataclass
class Checkpoint:
    """A readable checkpoint. Build it with :func:`open_checkpoint`."""

    path: Path
    format: str  # "safetensors" or "pytorch"
    files: list[Path]
    tensors: list[TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)
    root: Path | None = None  # directory whose other files belong to the checkpoint
    index_file: Path | None = None
    aliases: dict[str, str] = field(default_factory=dict)  # tied alias -> canonical (.bin)
    config: dict[str, Any] | None = None
    config_error: ConfigError | None = None  # config.json is broken (see config.py)
    notes: list[str] = field(default_factory=list)  # warnings for the user
    _stamps: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tensors]

    def require_valid_config(self) -> None:
        """Raise the config.json problem, if any (every command that writes calls this)."""
        if self.config_error is not None:
            raise self.config_error

    @property
    def own_files(self) -> list[Path]:
        """The files this checkpoint is read from: weight files and the index."""
        return [*self.files, *([self.index_file] if self.index_file is not None else [])]

    @property
    def sharded(self) -> bool:
        return self.index_file is not None

    @property
    def total_params(self) -> int:
        return sum(t.params for t in self.tensors)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def reader(self) -> TensorReader:
        """A context manager that streams tensor bytes: ``with ckpt.reader() as r: ...``."""
        if self.format == "safetensors":
            return SafetensorsReader(self.check_unchanged)
        from .torch_bin import BinReader

        return BinReader(self.check_unchanged)

    def check_unchanged(self, fname: str | None = None, st: os.stat_result | None = None) -> None:
        """Raise if a source file changed (size or mtime) since it was opened: every file, or
        just ``fname`` (with its ``st`` when the caller already has it)."""
        for name in [fname] if fname is not None else list(self._stamps):
            stamp = self._stamps.get(name)
            if stamp is None:
                continue
            try:
                now = st if st is not None else os.stat(name)
            except OSError:
                now = None
            if now is None or (now.st_size, now.st_mtime_ns) != stamp:
                raise CorruptCheckpointError(
                    "source file changed while it was being read",
                    name,
                    "wait until whatever writes it has finished, then run again",
                )


WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def wrapper_prefix(names: Sequence[str]) -> str | None:
    """The wrapper prefix (DDP ``module.``, torch.compile ``_orig_mod.``) every name starts with."""
    for prefix in WRAPPER_PREFIXES:
        if names and all(n.startswith(prefix) for n in names):
            return prefix
    return None


def wrapper_hint(names: Sequence[str]) -> str:
    """A hint toward ``--strip-prefix`` when every name carries a wrapper prefix, else ''."""
    prefix = wrapper_prefix(names)
    if prefix is None:
        return ""
    return f"names start with {prefix!r} (saved from a wrapped model): pass --strip-prefix {prefix}"


def _dotted_prefix(prefix: str, names: Sequence[str], where: str) -> str:
    """``module`` means ``module.`` when every name starts with ``module.``; otherwise a prefix
    that does not end at a dot would leave names starting with ``.`` or cut a word: refused."""
    if not prefix or prefix.endswith("."):
        return prefix
    dotted = prefix + "."
    if names and all(n.startswith(dotted) for n in names):
        return dotted
    raise SelectionError(
        f"--strip-prefix {prefix!r} does not end with a dot and not every name starts with "
        f"{dotted!r}",
        where,
        f"give --strip-prefix {dotted!r} to strip it where present",
    )


def normalise_prefixes(ckpt: Checkpoint, prefixes: str | Sequence[str]) -> list[str]:
    """``--strip-prefix`` values as they will be applied (``module`` -> ``module.``)."""
    return normalise_name_prefixes(prefixes, [*ckpt.names, *ckpt.aliases], str(ckpt.path))


def normalise_name_prefixes(
    prefixes: str | Sequence[str], names: Sequence[str], where: str
) -> list[str]:
    """``module`` means ``module.`` when every one of ``names`` starts with ``module.``."""
    if isinstance(prefixes, str):
        prefixes = (prefixes,)
    return [_dotted_prefix(p, names, where) for p in prefixes]


def strip_first_prefix(name: str, prefixes: Sequence[str]) -> str:
    """``name`` without the first of ``prefixes`` it starts with (never the whole name)."""
    for prefix in prefixes:
        if prefix and name.startswith(prefix) and len(name) > len(prefix):
            return name[len(prefix) :]
    return name


def require_a_prefix(names: Sequence[str], prefixes: Sequence[str], where: str) -> None:
    """Refuse prefixes that strip nothing from any of ``names``."""
    if not any(strip_first_prefix(n, prefixes) != n for n in names):
        raise SelectionError(
            "no tensor name starts with " + " or ".join(repr(p) for p in prefixes),
            where,
            f"names start like {names[0]!r}" if names else "check the prefix",
        )


def strip_prefixes(ckpt: Checkpoint, prefixes: str | Sequence[str]) -> Checkpoint:
    """A view of ``ckpt`` with the first matching prefix removed from every name.

    For checkpoints saved from wrapped models: ``module.`` (DistributedDataParallel) or
    ``_orig_mod.`` (torch.compile), which transformers does not strip. ``module`` without the
    dot is read as ``module.`` when every name starts with ``module.``. Two names that become
    one are an error.
    """
    prefixes = normalise_prefixes(ckpt, prefixes)
    if not prefixes:
        return ckpt
    require_a_prefix([*ckpt.names, *ckpt.aliases], prefixes, str(ckpt.path))

    def strip(name: str) -> str:
        return strip_first_prefix(name, prefixes)

    seen: dict[str, str] = {}
    tensors = []
    for t in ckpt.tensors:
        new = strip(t.name)
        if new in seen:
            raise SelectionError(
                f"--strip-prefix makes {seen[new]!r} and {t.name!r} the same name {new!r}",
                str(ckpt.path),
                "strip a different prefix, or drop one of the two first",
            )
        seen[new] = t.name
        tensors.append(replace(t, name=new, stored_name=t.key) if new != t.name else t)
    aliases = {strip(a): strip(c) for a, c in ckpt.aliases.items()}
    return replace(ckpt, tensors=tensors, aliases=aliases)


# ---------------------------------------------------------------------------------------------
# Locating weights


def open_checkpoint(path: str | os.PathLike[str], revision: str | None = None) -> Checkpoint:
    """Open a checkpoint directory or file and list its tensors. A Hugging Face repo id
    (``org/name[@revision]``) that is no local path is looked up in the cache (see hub.py).

    >>> ckpt = open_checkpoint("my-bert")          # doctest: +SKIP
    >>> ckpt.format, len(ckpt.tensors)             # doctest: +SKIP
    ('safetensors', 199)
    """
    p = Path(path)
    if not p.exists() or revision is not None:
        from .hub import resolve

        p = resolve(path, revision)
    try:
        ckpt = _open_dir(p) if p.is_dir() else _open_file(p)
        base = ckpt.root if ckpt.root is not None else ckpt.path.parent
        ckpt.config, ckpt.config_error = read_config(base / "config.json")
        if ckpt.config_error is not None:
            ckpt.notes.append(ckpt.config_error.message)
    except OSError as exc:
        if isinstance(exc, CkptSurgeonError):
            raise
        raise read_error(exc, exc.filename or p) from exc
    return ckpt


def _open_dir(d: Path) -> Checkpoint:
    for fname, opener in (
        (SAFE_SINGLE, _open_safetensors),
        (SAFE_INDEX, _open_index),
        (BIN_SINGLE, _open_torch),
        (BIN_INDEX, _open_index),
    ):
        candidate = d / fname
        if candidate.exists():
            ckpt = opener(candidate)
            ckpt.root = d
            ckpt.path = d
            return ckpt
    entries = sorted(x.name for x in d.iterdir())
    singles = [n for n in entries if n.endswith(".safetensors") and (d / n).is_file()]
    if len(singles) == 1:
        ckpt = _open_safetensors(d / singles[0])
        ckpt.root, ckpt.path = d, d
        return ckpt
    torch_files = [n for n in entries if n.endswith(TORCH_SUFFIXES) and (d / n).is_file()]
    if not singles and len(torch_files) == 1:
        ckpt = _open_torch(d / torch_files[0])
        ckpt.root, ckpt.path = d, d
        return ckpt
    listing = ", ".join(entries[:12]) + (", ..." if len(entries) > 12 else "") or "nothing"
    raise CheckpointNotFoundError(
        f"no weights found (the directory holds: {listing})",
        str(d),
        f"expected {SAFE_SINGLE}, {SAFE_INDEX}, {BIN_SINGLE} or {BIN_INDEX}; "
        "or pass the weight file itself",
    )


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


def _open_file(p: Path) -> Checkpoint:
    name = p.name
    require_regular_file(p)
    if name.endswith(".index.json"):
        ckpt = _open_index(p)
        ckpt.root = p.parent
        return ckpt
    if name.endswith(".safetensors"):
        return _open_safetensors(p)
    if name.endswith(TORCH_SUFFIXES):
        return _open_torch(p)
    # Unknown extension: sniff the first bytes.
    with open(p, "rb") as fh:
        head = fh.read(16)
    # safetensors first: its 8-byte header length can start with 0x80, a pickle's first byte,
    # but a pickle or zip never has the JSON '{' at byte 8 of a safetensors header
    if len(head) >= 9 and head[8:9] == b"{":
        return _open_safetensors(p)
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return _open_torch(p)
    raise UnsupportedFormatError(
        "unrecognised checkpoint format",
        str(p),
        "give a .safetensors, .index.json, .bin, .pt or .pth file, or a model directory",
    )


def _stamp(p: Path) -> tuple[int, int]:
    st = p.stat()
    return (st.st_size, st.st_mtime_ns)


def _open_safetensors(p: Path) -> Checkpoint:
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
        _stamps={str(p): _stamp(p)},
    )


def _open_torch(p: Path) -> Checkpoint:
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
        _stamps={str(p): _stamp(p)},
    )


def _check_shard_name(index: Path, shard: Any) -> str:
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


def _open_index(index: Path) -> Checkpoint:
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
        _check_shard_name(index, shard)
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
        (_open_safetensors if is_safe else _open_torch)(index.parent / shard)
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
