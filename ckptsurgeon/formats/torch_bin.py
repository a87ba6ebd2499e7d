"""PyTorch ``.bin``/``.pt``/``.pth`` state dicts, zip and legacy formats.

Files are loaded with ``torch.load(weights_only=True)``, memory-mapped when the format allows
(zip). A pickle that needs any global beyond tensors is refused by torch's restricted
unpickler and never executed. Tensors that share storage (tied weights) are reported as
aliases of the canonical name that transformers keeps.
"""

from __future__ import annotations

import pickle
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..dtypes import TORCH_TO_ST
from ..errors import CorruptCheckpointError, UnsafePickleError, UnsupportedFormatError
from ..ties import canonical_of
from .tensorio import CheckUnchanged, SafetensorsReader, TensorInfo, TensorReader, read_error

if TYPE_CHECKING:  # pragma: no cover
    import torch

WRAPPER_KEYS = ("state_dict", "model", "module", "model_state_dict")


def load_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Load a torch file safely and return ``(state_dict, notes)``."""
    import torch

    notes: list[str] = []
    is_zip = zipfile.is_zipfile(path)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(2)
    except OSError as exc:
        raise read_error(exc, path) from None
    if not is_zip and magic[:1] != b"\x80":
        if magic == b"PK":
            raise CorruptCheckpointError(
                "corrupt zip archive", str(path), "re-download or re-export the file"
            )
        raise UnsupportedFormatError(
            "not a PyTorch checkpoint (neither a zip archive nor a pickle)",
            str(path),
            "give a file written by torch.save or save_pretrained",
        )
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" in text or "Unsupported" in text:
            first = next((ln for ln in text.splitlines() if "global" in ln.lower()), "")
            detail = first.strip() or "it names objects other than tensors"
            raise UnsafePickleError(
                f"refused to unpickle: {detail[:200]}",
                str(path),
                "this file needs code beyond plain tensors; it was not executed. Convert it "
                "in a trusted environment or ask its publisher for safetensors",
            ) from None
        raise CorruptCheckpointError(
            f"corrupt pickle ({text.splitlines()[0][:200] if text else 'unreadable'})",
            str(path),
            "re-download or re-export the file",
        ) from None
    except Exception as exc:  # a corrupt file makes torch raise almost anything (AssertionError...)
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise CorruptCheckpointError(
            f"cannot load PyTorch file ({first})", str(path), "re-download or re-export the file"
        ) from None
    state = _unwrap(obj, path, notes)
    return state, notes


def _unwrap(obj: Any, path: Path, notes: list[str]) -> dict[str, torch.Tensor]:
    import torch

    if isinstance(obj, dict):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        for key in WRAPPER_KEYS:
            inner = obj.get(key)
            if (
                isinstance(inner, dict)
                and inner
                and any(isinstance(v, torch.Tensor) for v in inner.values())
            ):
                notes.append(f"{path.name}: using the state dict under key {key!r}")
                obj = inner
                break
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        skipped = [k for k in obj if k not in tensors]
        if tensors:
            if skipped:
                notes.append(
                    f"{path.name}: ignored {len(skipped)} non-tensor entries: "
                    + ", ".join(map(str, skipped[:5]))
                )
            bad = [k for k in tensors if not isinstance(k, str)]
            if bad:
                raise CorruptCheckpointError(
                    f"state dict key {bad[0]!r} is not a string", str(path), "re-export the file"
                )
            return tensors
    raise UnsupportedFormatError(
        f"the file holds a {type(obj).__name__}, not a state dict of tensors",
        str(path),
        "save the model's state_dict() (or a dict with a 'state_dict' entry)",
    )


def _tied_groups(state: dict[str, torch.Tensor]) -> dict[str, str]:
    groups: dict[tuple[Any, ...], list[str]] = {}
    for name, t in state.items():
        if t.numel() == 0:
            continue
        key = (
            t.untyped_storage().data_ptr(),
            t.storage_offset(),
            tuple(t.shape),
            tuple(t.stride()),
            t.dtype,
        )
        groups.setdefault(key, []).append(name)
    aliases: dict[str, str] = {}
    for names in groups.values():
        if len(names) > 1:
            canonical = canonical_of(names)
            for n in names:
                if n != canonical:
                    aliases[n] = canonical
    return aliases


def st_dtype(t: torch.Tensor, name: str, path: Path) -> str:
    key = str(t.dtype).removeprefix("torch.")
    if key not in TORCH_TO_ST:
        raise UnsupportedFormatError(
            f"tensor {name!r} has dtype {key}, which safetensors cannot store",
            str(path),
            "cast it to a supported dtype first",
        )
    return TORCH_TO_ST[key]


def list_torch_file(path: Path) -> tuple[list[TensorInfo], dict[str, str], list[str]]:
    state, notes = load_state_dict(path)
    offsets = zip_offsets(path, state)
    infos = []
    for name, t in state.items():
        dtype = st_dtype(t, name, path)
        nbytes = t.numel() * t.element_size()
        infos.append(TensorInfo(name, dtype, tuple(t.shape), nbytes, str(path), offsets.get(name)))
    return infos, _tied_groups(state), notes


def zip_offsets(path: Path, state: dict[str, torch.Tensor]) -> dict[str, int]:
    """File offsets of the bytes of contiguous tensors in a memory-mapped zip checkpoint.

    torch stores every storage as an uncompressed zip entry ``<archive>/data/<key>`` and, with
    ``mmap=True``, maps the whole file, so a storage's address minus the mapping's base is its
    entry's data offset. The base is unknown; it is derived from the lowest storage and then
    every storage is checked against the zip directory (offset and size). If anything fails to
    match, no offsets are returned and tensors are read through torch instead. With offsets,
    kept tensors are copied file to file in the kernel and never paged into this process.
    """
    if not zipfile.is_zipfile(path):
        return {}
    try:
        entries: dict[int, int] = {}  # data offset -> size
        with zipfile.ZipFile(path) as zf, open(path, "rb") as fh:
            for zi in zf.infolist():
                if "/data/" not in zi.filename or zi.compress_type != zipfile.ZIP_STORED:
                    continue
                fh.seek(zi.header_offset)
                local = fh.read(30)
                if len(local) != 30 or local[:4] != b"PK\x03\x04":
                    return {}
                name_len, extra_len = struct.unpack("<HH", local[26:30])
                entries[zi.header_offset + 30 + name_len + extra_len] = zi.file_size
        storages = {}
        for t in state.values():
            if t.numel():
                s = t.untyped_storage()
                storages[s.data_ptr()] = s.nbytes()
        if not storages or not entries:
            return {}
        base = min(storages) - min(entries)
        for ptr, size in storages.items():
            if entries.get(ptr - base, -1) < size:
                return {}
        return {
            name: int(t.untyped_storage().data_ptr() - base + t.storage_offset() * t.element_size())
            for name, t in state.items()
            if t.numel() and t.is_contiguous()
        }
    except (OSError, ValueError, zipfile.BadZipFile, struct.error):
        return {}


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a tensor in C order (a copy only if not contiguous)."""
    import torch

    flat = t.detach().contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return flat.view(torch.uint8).numpy().data.cast("B")


class BinReader(SafetensorsReader):
    """Reads tensors from torch files: straight from the file where their offsets are known
    (zip format, see :func:`zip_offsets`), else through torch, one file loaded at a time."""

    def __init__(self, check_unchanged: CheckUnchanged) -> None:
        super().__init__(check_unchanged)
        self._file: str | None = None
        self._state: dict[str, Any] = {}

    def _get(self, info: TensorInfo) -> torch.Tensor:
        if self._file != info.file:
            self._state = {}
            self._file = None
            self.check_unchanged()
            self._state, _ = load_state_dict(Path(info.file))
            self._file = info.file
        return self._state[info.key]

    def close(self) -> None:
        self._state = {}
        self._file = None
        super().close()

    def copy_to(self, info: TensorInfo, fd: int) -> None:
        if info.offset is not None:
            return super().copy_to(info, fd)  # kernel copy, straight from the file
        return TensorReader.copy_to(self, info, fd)  # bytes through torch

    def chunks(self, info: TensorInfo, chunk_bytes: int = 8 << 20) -> Iterator[bytes | memoryview]:
        if info.offset is not None:
            yield from super().chunks(info, chunk_bytes)
            return
        data = tensor_bytes(self._get(info))
        if data.nbytes != info.nbytes:
            raise CorruptCheckpointError(
                f"tensor {info.name!r} changed size since it was listed",
                info.file,
                "the file changed while being read; run again",
            )
        for start in range(0, data.nbytes, chunk_bytes):
            yield data[start : start + chunk_bytes]
