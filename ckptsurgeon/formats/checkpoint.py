"""Opening a checkpoint: find its weight files, list its tensors, read their bytes.

``open_checkpoint(path)`` accepts a Hugging Face model directory or a single file (safetensors,
a sharded index, a torch ``.bin``/``.pt``/``.pth`` in zip or legacy format) and returns a
:class:`Checkpoint` whose tensor list comes from headers alone for safetensors (torch is not even
imported). Tensor bytes are read later, in chunks, through :meth:`Checkpoint.reader`.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import CheckpointNotFoundError, CkptSurgeonError, UnsupportedFormatError
from .config_json import read_config
from .hf_files import open_index, open_safetensors, open_torch, require_regular_file
from .opened import (
    BIN_INDEX,
    BIN_SINGLE,
    SAFE_INDEX,
    SAFE_SINGLE,
    TORCH_SUFFIXES,
    TRAINING_FORMATS,
    Checkpoint,
)
from .tensorio import TensorInfo, TensorReader, read_error, write_all
from .training import fold_equal_ties, lightning_hint, open_lightning, open_training_dir

__all__ = [
    "BIN_INDEX",
    "BIN_SINGLE",
    "SAFE_INDEX",
    "SAFE_SINGLE",
    "TORCH_SUFFIXES",
    "TRAINING_FORMATS",
    "Checkpoint",
    "TensorInfo",
    "TensorReader",
    "lightning_hint",
    "open_checkpoint",
    "read_error",
    "require_regular_file",
    "write_all",
]


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
        if config_from is not None:
            ckpt.reference = _reference(config_from)
        ckpt.config, ckpt.config_error = read_config(ckpt.side_dir / "config.json")
        if ckpt.config_error is not None:
            ckpt.notes.append(ckpt.config_error.message)
        if ckpt.format == "dcp":
            fold_equal_ties(ckpt)
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


def _open_dir(d: Path) -> Checkpoint:
    for fname, opener in (
        (SAFE_SINGLE, open_safetensors),
        (SAFE_INDEX, open_index),
        (BIN_SINGLE, open_torch),
        (BIN_INDEX, open_index),
    ):
        candidate = d / fname
        if candidate.exists():
            ckpt = opener(candidate)
            ckpt.root = d
            ckpt.path = d
            return ckpt
    training = open_training_dir(d)
    if training is not None:
        return training
    entries = sorted(x.name for x in d.iterdir())
    singles = [n for n in entries if n.endswith(".safetensors") and (d / n).is_file()]
    if len(singles) == 1:
        ckpt = open_safetensors(d / singles[0])
        ckpt.root, ckpt.path = d, d
        return ckpt
    torch_files = [n for n in entries if n.endswith(TORCH_SUFFIXES) and (d / n).is_file()]
    if not singles and len(torch_files) == 1:
        ckpt = open_torch(d / torch_files[0])
        ckpt.root, ckpt.path = d, d
        return ckpt
    listing = ", ".join(entries[:12]) + (", ..." if len(entries) > 12 else "") or "nothing"
    raise CheckpointNotFoundError(
        f"no weights found (the directory holds: {listing})",
        str(d),
        f"expected {SAFE_SINGLE}, {SAFE_INDEX}, {BIN_SINGLE} or {BIN_INDEX}, a training "
        "checkpoint (DCP .metadata, DeepSpeed 'latest'); or pass the weight file itself",
    )


def _open_file(p: Path) -> Checkpoint:
    name = p.name
    require_regular_file(p)
    if name.endswith(".index.json"):
        ckpt = open_index(p)
        ckpt.root = p.parent
        return ckpt
    if name.endswith(".safetensors"):
        return open_safetensors(p)
    if name.endswith(".ckpt"):
        from .lightning import is_lightning

        if is_lightning(p):
            return open_lightning(p)
    if name.endswith(TORCH_SUFFIXES):
        return open_torch(p)
    # Unknown extension: sniff the first bytes.
    with open(p, "rb") as fh:
        head = fh.read(16)
    # safetensors first: its 8-byte header length can start with 0x80, a pickle's first byte,
    # but a pickle or zip never has the JSON '{' at byte 8 of a safetensors header
    if len(head) >= 9 and head[8:9] == b"{":
        return open_safetensors(p)
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return open_torch(p)
    raise UnsupportedFormatError(
        "unrecognised checkpoint format",
        str(p),
        "give a .safetensors, .index.json, .bin, .pt or .pth file, or a model directory",
    )
