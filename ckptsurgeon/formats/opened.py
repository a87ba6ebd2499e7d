"""The opened checkpoint: what :func:`~.checkpoint.open_checkpoint` returns, with the names of
the Hugging Face weight files. Every reader of a format builds one."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, CorruptCheckpointError
from .tensorio import SafetensorsReader, TensorInfo, TensorReader

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
TRAINING_FORMATS = ("dcp", "deepspeed", "lightning")


def stamp(p: Path) -> tuple[int, int]:
    """A file's size and mtime, checked again while it is read (``check_unchanged``)."""
    st = p.stat()
    return (st.st_size, st.st_mtime_ns)


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
    def side_dir(self) -> Path:
        """The folder whose config.json and tokenizer files are this checkpoint's: the
        ``--config-from`` folder, else where config.json is read, else beside the weights."""
        if self.reference is not None:
            return self.reference
        if self.config_dir is not None:
            return self.config_dir
        return self.root if self.root is not None else self.path.parent

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
