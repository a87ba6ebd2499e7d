"""``torch.save`` zip archives listed without torch and without executing anything.

A ``torch.save`` file (and each chunk of a DCP ``.distcp`` file) is an uncompressed zip holding
``<archive>/data.pkl`` (the object tree, tensors as persistent references to storages) and one
member ``<archive>/data/<key>`` per storage (raw little-endian bytes). :func:`list_archive`
unpickles ``data.pkl`` with an allow-list: tensors become :class:`LazyTensor` (where their bytes
are in the file, nothing read), the few classes a format needs become inert stand-ins the
caller passes, and any other global is refused with :class:`UnsafePickleError`. This is how
optimizer state is skipped without being read: its tensors are listed, never loaded.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from ..dtypes import numel_of
from ..errors import CorruptCheckpointError, UnsafePickleError

# torch's storage classes and dtypes, by their names in a pickle, as safetensors dtypes
STORAGE_DTYPES = {
    "FloatStorage": "F32",
    "DoubleStorage": "F64",
    "HalfStorage": "F16",
    "BFloat16Storage": "BF16",
    "LongStorage": "I64",
    "IntStorage": "I32",
    "ShortStorage": "I16",
    "CharStorage": "I8",
    "ByteStorage": "U8",
    "BoolStorage": "BOOL",
}
TORCH_DTYPES = {
    "float32": "F32",
    "float": "F32",
    "float64": "F64",
    "double": "F64",
    "float16": "F16",
    "half": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "long": "I64",
    "int32": "I32",
    "int": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
}
ITEMSIZE = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2}


def itemsize(dtype: str) -> int:
    return ITEMSIZE.get(dtype, 1)


@dataclass(frozen=True)
class Storage:
    """One storage of an archive: where its bytes are in the file."""

    key: str
    dtype: str
    offset: int  # absolute offset in the file
    nbytes: int


@dataclass(frozen=True)
class LazyTensor:
    """A tensor of an archive, not read: its storage, offset (elements), shape and stride."""

    storage: Storage
    storage_offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def dtype(self) -> str:
        return self.storage.dtype

    @property
    def nbytes(self) -> int:
        return numel_of(self.shape) * itemsize(self.dtype)

    @property
    def contiguous(self) -> bool:
        expected = 1
        for size, step in zip(reversed(self.shape), reversed(self.stride), strict=True):
            if size != 1 and step != expected:
                return False
            expected *= size
        return True

    @property
    def offset(self) -> int:
        """Absolute file offset of the first element."""
        return self.storage.offset + self.storage_offset * itemsize(self.dtype)

    def same_bytes_as(self, other: LazyTensor) -> bool:
        return (self.storage.key, self.storage_offset, self.shape, self.stride) == (
            other.storage.key,
            other.storage_offset,
            other.shape,
            other.stride,
        )


class FileSlice(io.RawIOBase):
    """A read-only window ``[start, start + length)`` of a file, for ``zipfile``."""

    def __init__(self, fh: IO[bytes], start: int, length: int) -> None:
        self.fh, self.start, self.length, self.pos = fh, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.length}[whence]
        self.pos = max(0, base + pos)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int | None = -1) -> bytes:
        left = max(0, self.length - self.pos)
        n = left if n is None or n < 0 else min(n, left)
        self.fh.seek(self.start + self.pos)
        data = self.fh.read(n)
        self.pos += len(data)
        return data

    def readinto(self, buf: Any) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)


def _rebuild_tensor(storage: Storage, storage_offset: int, size: Any, stride: Any, *_: Any) -> Any:
    return LazyTensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data


def _rebuild_from_type(func: Callable[..., Any], _new_type: Any, args: Any, _state: Any) -> Any:
    return func(*args)  # a tensor subclass (DeepSpeed's ds_id attributes): the tensor alone


class Inert:
    """A stand-in for a class a format names but that is never needed: it takes any
    arguments and state and does nothing with them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self


def inert(name: str) -> type:
    return type(name, (Inert,), {})


class _Marker(str):
    """A torch global that only names something (a storage class, a dtype, a layout)."""


# what every torch archive may name
BASE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch", "Tensor"): _Marker("Tensor"),
    ("torch.nn.parameter", "Parameter"): _Marker("Parameter"),
    ("torch", "Size"): tuple,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
}
for _name, _dtype in STORAGE_DTYPES.items():
    BASE_GLOBALS[("torch", _name)] = _Marker(_dtype)
for _name, _dtype in TORCH_DTYPES.items():
    BASE_GLOBALS[("torch", _name)] = _Marker(_dtype)


class RestrictedUnpickler(pickle.Unpickler):
    """Admits ``allowed`` globals (stand-ins by module and name) and nothing else."""

    def __init__(
        self,
        data: bytes,
        where: str,
        allowed: dict[tuple[str, str], Any],
        storages: dict[str, tuple[int, int]] | None = None,
    ) -> None:
        super().__init__(io.BytesIO(data))
        self.where = where
        self.allowed = allowed
        self.storages = storages  # key -> (offset, nbytes) of the zip members

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refused to unpickle: it names {module}.{name}, which this format never needs",
                self.where,
                "the file was not executed; if it is genuine, convert it in a trusted "
                "environment or ask its publisher for safetensors",
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if self.storages is None or not isinstance(pid, tuple) or len(pid) < 5:
            raise CorruptCheckpointError(
                "unexpected persistent reference in the pickle", self.where, "re-export the file"
            )
        _, kind, key, _location, numel = pid[:5]
        dtype = str(kind) if isinstance(kind, _Marker) else None
        if dtype is None or str(key) not in self.storages:
            raise CorruptCheckpointError(
                f"storage {key!r} of the pickle is missing from the archive",
                self.where,
                "the file is truncated or corrupt; re-export it",
            )
        offset, size = self.storages[str(key)]
        if size < int(numel) * itemsize(dtype):
            raise CorruptCheckpointError(
                f"storage {key!r} is shorter than its tensor", self.where, "re-export the file"
            )
        return Storage(str(key), dtype, offset, size)


def restricted_loads(data: bytes, where: str, allowed: dict[tuple[str, str], Any]) -> Any:
    """Unpickle a plain pickle (no storages) with an allow-list."""
    return _load(RestrictedUnpickler(data, where, allowed), where)


def _load(unpickler: RestrictedUnpickler, where: str) -> Any:
    """Run an unpickler; whatever a damaged pickle makes it raise is one corrupt-file error."""
    try:
        return unpickler.load()
    except (UnsafePickleError, CorruptCheckpointError):
        raise
    except RecursionError:
        raise CorruptCheckpointError("pickle nested too deep", where, "re-export it") from None
    except Exception as exc:
        raise CorruptCheckpointError(
            f"corrupt pickle ({type(exc).__name__}: {str(exc)[:120]})", where, "re-export it"
        ) from None


def zip_members(fh: IO[bytes], base: int, where: str) -> dict[str, tuple[int, int]]:
    """Every stored member of a zip (``fh`` a file or a slice of one): name -> (absolute data
    offset, size). Compressed members are refused (torch never compresses)."""
    members: dict[str, tuple[int, int]] = {}
    try:
        with zipfile.ZipFile(fh) as zf:
            for zi in zf.infolist():
                if zi.compress_type != zipfile.ZIP_STORED:
                    raise CorruptCheckpointError(
                        f"member {zi.filename!r} is compressed", where, "re-export the file"
                    )
                fh.seek(zi.header_offset)
                local = fh.read(30)
                if len(local) != 30 or local[:4] != b"PK\x03\x04":
                    raise CorruptCheckpointError(
                        "zip member header is damaged", where, "re-export the file"
                    )
                name_len, extra_len = struct.unpack("<HH", local[26:30])
                start = zi.header_offset + 30 + name_len + extra_len
                members[zi.filename] = (base + start, zi.file_size)
    except (zipfile.BadZipFile, struct.error, ValueError, OSError) as exc:
        raise CorruptCheckpointError(
            f"not a readable torch archive ({str(exc)[:120] or type(exc).__name__})",
            where,
            "the file is truncated or corrupt; re-export it",
        ) from None
    return members


def list_archive(
    path: str | os.PathLike[str],
    allowed: dict[tuple[str, str], Any] | None = None,
    start: int = 0,
    length: int | None = None,
    where: str | None = None,
) -> Any:
    """The object tree of a ``torch.save`` archive (the whole file, or the window
    ``[start, start + length)`` of it), tensors as :class:`LazyTensor`. Reads the zip
    directory and ``data.pkl`` only."""
    where = where or str(path)
    globals_ = {**BASE_GLOBALS, **(allowed or {})}
    with open(path, "rb") as raw:
        size = os.fstat(raw.fileno()).st_size if length is None else length
        if start + size > os.fstat(raw.fileno()).st_size:
            raise CorruptCheckpointError(
                "the file ends before the data it should hold",
                where,
                "a rank's file is truncated; copy it again from where the run wrote it",
            )
        fh: IO[bytes] = FileSlice(raw, start, size)  # type: ignore[assignment]
        members = zip_members(fh, start, where)
        pkl = [n for n in members if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise CorruptCheckpointError(
                "not a torch archive (no data.pkl)", where, "give a file written by torch.save"
            )
        prefix = pkl[0][: -len("data.pkl")]
        order = members.get(prefix + "byteorder")
        if order is not None:
            raw.seek(order[0])
            if raw.read(order[1]) not in (b"little", b""):
                raise CorruptCheckpointError(
                    "the archive is big-endian", where, "re-save it on a little-endian machine"
                )
        storages = {
            name[len(prefix) + len("data/") :]: value
            for name, value in members.items()
            if name.startswith(prefix + "data/")
        }
        offset, nbytes = members[pkl[0]]
        raw.seek(offset)
        data = raw.read(nbytes)
    return _load(RestrictedUnpickler(data, where, globals_, storages), where)


def lazy_tensors(obj: Any) -> list[LazyTensor]:
    """Every tensor in an object tree (dicts, lists, tuples)."""
    found: list[LazyTensor] = []
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, LazyTensor):
            found.append(x)
        elif isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, list | tuple):
            stack.extend(x)
    return found
