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
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import (
    CheckpointNotFoundError,
    CkptSurgeonError,
    ConfigError,
    CorruptCheckpointError,
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
    "write_all",
]

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
TRAINING_FORMATS = ("dcp", "deepspeed", "lightning")
ACCELERATE_MODEL_DCP = "pytorch_model_fsdp_0"


@dataclass
class Checkpoint:
    """A readable checkpoint. Build it with :func:`open_checkpoint`."""

    path: Path
    format: str  # "safetensors", "pytorch", or a training format: "dcp", "deepspeed", "lightning"
    files: list[Path]
    tensors: list[TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)
    root: Path | None = None  # directory whose other files belong to the checkpoint
    index_file: Path | None = None
    aliases: dict[str, str] = field(default_factory=dict)  # tied alias -> canonical (.bin)
    config: dict[str, Any] | None = None
    config_error: ConfigError | None = None  # config.json is broken (see config.py)
    notes: list[str] = field(default_factory=list)  # warnings for the user
    not_read: list[str] = field(default_factory=list)  # training state left alone
    ranks: int = 0  # training checkpoints: the ranks that wrote it
    detail: str = ""  # training checkpoints: what was read (stage, tag, ranks)
    config_dir: Path | None = None  # where config.json is read, when not beside the weights
    reference: Path | None = None  # --config-from: the model folder that supplies config.json
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
    def training(self) -> bool:
        """Written by a trainer (DCP, DeepSpeed, Lightning): no config.json or tokenizer."""
        return self.format in TRAINING_FORMATS

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
        if self.format != "pytorch":  # every byte's place is known: read straight from files
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


# ---------------------------------------------------------------------------------------------
# Locating weights


def open_checkpoint(
    path: str | os.PathLike[str],
    revision: str | None = None,
    config_from: str | os.PathLike[str] | None = None,
) -> Checkpoint:
    """Open a checkpoint directory or file and list its tensors. A Hugging Face repo id
    (``org/name[@revision]``) that is no local path is looked up in the cache (see hub.py).
    ``config_from`` (``--config-from``) is a model folder or repo id whose config.json is the
    checkpoint's (a training checkpoint has none).

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
        base = ckpt.config_dir or (ckpt.root if ckpt.root is not None else ckpt.path.parent)
        if config_from is not None:
            base = ckpt.reference = _reference(config_from)
        ckpt.config, ckpt.config_error = read_config(base / "config.json")
        if ckpt.config_error is not None:
            ckpt.notes.append(ckpt.config_error.message)
        if ckpt.format == "dcp":
            _fold_equal_ties(ckpt)
    except OSError as exc:
        if isinstance(exc, CkptSurgeonError):
            raise
        raise read_error(exc, exc.filename or p) from exc
    return ckpt


def _reference(ref: str | os.PathLike[str]) -> Path:
    """The model folder ``--config-from`` names (a local folder, or a repo id in the cache)."""
    p = Path(ref)
    if not p.exists():
        from .hub import resolve

        p = resolve(ref, None)
    if not p.is_dir() or not (p / "config.json").is_file():
        raise CheckpointNotFoundError(
            "--config-from needs a model folder holding config.json",
            str(ref),
            "give the folder (or Hub id) of the model the checkpoint was trained from",
        )
    return p


def _fold_equal_ties(ckpt: Checkpoint) -> None:
    """DCP stores a tied head a second time: fold it into its canonical name when the bytes are
    equal (as ``save_pretrained`` writes it once); differing bytes are an error."""
    from ..ties import head_ties, name_ties

    infos = {t.name: t for t in ckpt.tensors}
    ties = name_ties(list(infos), ckpt.config)
    maybe = head_ties(list(infos), ckpt.config)  # lm_head: folded only when equal
    with ckpt.reader() as reader:
        for alias, canonical in {**ties, **maybe}.items():
            a, c = infos[alias], infos[canonical]
            if (a.dtype, a.shape) != (c.dtype, c.shape):
                continue
            equal = all(
                bytes(x) == bytes(y)
                for x, y in zip(reader.chunks(a), reader.chunks(c), strict=True)
            )
            if not equal and alias in maybe:
                continue  # an untied head
            if not equal:
                raise CorruptCheckpointError(
                    f"tensors {alias!r} and {canonical!r} are tied in the model but their "
                    "stored values differ",
                    str(ckpt.path),
                    "set tie_word_embeddings to false in the config (--config-from) if the "
                    "model is untied, or re-save the checkpoint",
                )
            ckpt.aliases[alias] = canonical


def _open_training_dir(d: Path) -> Checkpoint | None:
    """A DCP folder, accelerate's ``save_state`` folder or a DeepSpeed folder; else None."""
    from .dcp import is_dcp, list_dcp
    from .deepspeed import is_deepspeed, list_deepspeed

    dcp_dir = d / ACCELERATE_MODEL_DCP if is_dcp(d / ACCELERATE_MODEL_DCP) else d
    if is_dcp(dcp_dir):
        found = list_dcp(dcp_dir)
        return Checkpoint(
            path=d,
            format="dcp",
            files=found.files,
            tensors=found.tensors,
            not_read=found.not_read,
            ranks=found.ranks,
            detail=f"{found.ranks} rank{'s' * (found.ranks != 1)}"
            + (
                f", the model DCP {ACCELERATE_MODEL_DCP}/ of accelerate's save_state"
                if dcp_dir != d
                else ""
            ),
            config_dir=d,
            _stamps={str(f): _stamp(f) for f in found.files},
        )
    if is_deepspeed(d):
        ds = list_deepspeed(d)
        aliases = ds.aliases
        infos = {t.name: t for t in ds.tensors}
        tensors = [*ds.tensors, *(replace(infos[c], name=a) for a, c in aliases.items())]
        return Checkpoint(
            path=d,
            format="deepspeed",
            files=ds.files,
            tensors=tensors,
            aliases=dict(aliases),
            not_read=ds.not_read,
            ranks=ds.ranks,
            detail=f"ZeRO stage {ds.stage}, tag {ds.folder.name}, {ds.ranks} ranks: the fp32 "
            "master weights",
            config_dir=d,
            _stamps={str(f): _stamp(f) for f in ds.files},
        )
    return None


def lightning_hint(ckpt: Checkpoint) -> str:
    """Lightning names start with the LightningModule's attribute (``model.``): the hint to
    strip it, or '' when they do not all start with one."""
    if ckpt.format != "lightning" or not ckpt.names:
        return ""
    first = ckpt.names[0].split(".", 1)[0] + "."
    if not all(n.startswith(first) for n in [*ckpt.names, *ckpt.aliases]):
        return ""
    return (
        f"names start with {first!r}, the LightningModule's attribute: pass --strip-prefix "
        f"{first} to write them as the model names them"
    )


def _open_lightning(p: Path) -> Checkpoint:
    from .lightning import list_lightning

    found = list_lightning(p)
    ckpt = Checkpoint(
        path=p,
        format="lightning",
        files=[p],
        tensors=found.tensors,
        aliases=found.aliases,
        not_read=found.not_read,
        config_dir=p.parent,
        _stamps={str(p): _stamp(p)},
    )
    hint = lightning_hint(ckpt)
    if hint:
        ckpt.notes.append(hint)
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
    training = _open_training_dir(d)
    if training is not None:
        return training
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
        f"expected {SAFE_SINGLE}, {SAFE_INDEX}, {BIN_SINGLE} or {BIN_INDEX}, a training "
        "checkpoint (DCP .metadata, DeepSpeed 'latest'); or pass the weight file itself",
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
    if name.endswith(".ckpt"):
        from .lightning import is_lightning

        if is_lightning(p):
            return _open_lightning(p)
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
