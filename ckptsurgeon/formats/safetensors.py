"""The safetensors file format: parse and validate a header, build one.

Parsing reads only the first ``8 + N`` bytes of a file and checks everything the official
loader checks (and a little more) so that a bad file is refused before anything is written:
header size limits, UTF-8 JSON object, known dtypes, shapes that agree with byte ranges,
contiguous non-overlapping offsets that exactly cover the data buffer, string-only metadata,
duplicate names.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from typing import Any

from ..dtypes import DTYPES, nbytes_of
from ..errors import CorruptCheckpointError

MAX_HEADER_SIZE = 100_000_000
METADATA_KEY = "__metadata__"


@dataclass(frozen=True)
class HeaderEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # relative to the data buffer
    end: int


@dataclass(frozen=True)
class ParsedHeader:
    header_size: int  # N, the JSON length
    data_start: int  # 8 + N
    file_size: int
    metadata: dict[str, str]
    entries: tuple[HeaderEntry, ...]  # in data order


def _corrupt(path: str, problem: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"not a valid safetensors file: {problem}",
        path,
        "re-download or re-export the file; ckptsurgeon reads nothing from a corrupt checkpoint",
    )


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate name {key!r}")
            seen.add(key)
    return out


def read_header(path: str | os.PathLike[str]) -> ParsedHeader:
    """Read and validate the header of one safetensors file without touching tensor bytes."""
    spath = str(path)
    if os.path.isdir(spath):
        raise CorruptCheckpointError(
            "expected a safetensors file but found a directory",
            spath,
            "pass the directory that contains the weights, or the file itself",
        )
    with open(spath, "rb") as fh:
        file_size = os.fstat(fh.fileno()).st_size
        if file_size < 8:
            raise _corrupt(
                spath, f"file is {file_size} bytes, shorter than the 8-byte length prefix"
            )
        (n,) = struct.unpack("<Q", fh.read(8))
        if n > MAX_HEADER_SIZE:
            raise _corrupt(spath, f"header length {n} exceeds the 100 MB limit")
        if 8 + n > file_size:
            raise _corrupt(
                spath, f"header length {n} runs past the end of the {file_size}-byte file"
            )
        raw = fh.read(n)
    return parse_header_bytes(raw, file_size, spath)


def parse_header_bytes(raw: bytes, file_size: int, path: str) -> ParsedHeader:
    n = len(raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _corrupt(path, f"header is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates)
    except ValueError as exc:
        raise _corrupt(path, f"header is not valid JSON ({exc})") from None
    except RecursionError:  # '[[[[...' 100,000 deep: valid JSON, but no header is like that
        raise _corrupt(path, "header is not a safetensors header (JSON nested too deep)") from None
    if not isinstance(obj, dict):
        raise _corrupt(path, f"header is a JSON {type(obj).__name__}, not an object")
    metadata = obj.pop(METADATA_KEY, None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _corrupt(path, "__metadata__ must map strings to strings")
    entries: list[HeaderEntry] = []
    for name, info in obj.items():
        entries.append(_entry(name, info, path))
    entries.sort(key=lambda e: (e.begin, e.end))
    data_size = file_size - 8 - n
    pos = 0
    for e in entries:
        if e.begin != pos:
            kind = "overlaps the previous tensor" if e.begin < pos else "leaves a gap before it"
            raise _corrupt(path, f"tensor {e.name!r} at offset {e.begin} {kind}")
        pos = e.end
    if pos > data_size:
        raise _corrupt(
            path, f"data is truncated: tensors need {pos} bytes but the file holds {data_size}"
        )
    if pos < data_size:
        raise _corrupt(path, f"{data_size - pos} trailing bytes after the last tensor")
    return ParsedHeader(n, 8 + n, file_size, dict(metadata), tuple(entries))


def _entry(name: str, info: Any, path: str) -> HeaderEntry:
    if not isinstance(info, dict):
        raise _corrupt(path, f"entry {name!r} is not an object")
    dtype = info.get("dtype")
    if not isinstance(dtype, str):
        raise _corrupt(path, f"tensor {name!r} has no dtype")
    if dtype not in DTYPES:
        raise _corrupt(path, f"tensor {name!r} has unknown dtype {dtype!r}")
    shape = info.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise _corrupt(path, f"tensor {name!r} has an invalid shape {shape!r}")
    offsets = info.get("data_offsets")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
        or offsets[1] < offsets[0]
    ):
        raise _corrupt(path, f"tensor {name!r} has invalid data_offsets {offsets!r}")
    try:
        expected = nbytes_of(dtype, tuple(shape))
    except ValueError as exc:
        raise _corrupt(path, f"tensor {name!r}: {exc}") from None
    if expected > 2**63:
        raise _corrupt(path, f"tensor {name!r} shape {shape} is too large")
    if offsets[1] - offsets[0] != expected:
        raise _corrupt(
            path,
            f"tensor {name!r} is {offsets[1] - offsets[0]} bytes but dtype {dtype} and "
            f"shape {shape} need {expected}",
        )
    return HeaderEntry(name, dtype, tuple(shape), offsets[0], offsets[1])


def build_header(
    tensors: list[tuple[str, str, tuple[int, ...], int]],
    metadata: dict[str, str],
    data_start: tuple[int, int] | None = None,
) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """The header bytes (length prefix included) for tensors laid out in the given order.

    ``tensors`` is ``[(name, dtype, shape, nbytes)]`` in data order. Keys are sorted and the JSON
    is padded with spaces to a multiple of 8 so that the data buffer starts aligned; with
    ``data_start=(r, m)`` it is padded further (spaces, which the format allows) so that the
    data buffer starts at an offset that is ``r`` modulo ``m``, when that keeps it a multiple
    of 8. Returns the bytes and each tensor's ``(begin, end)`` relative to the data buffer.
    """
    obj: dict[str, Any] = {}
    offsets: dict[str, tuple[int, int]] = {}
    pos = 0
    for name, dtype, shape, nbytes in tensors:
        obj[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + nbytes]}
        offsets[name] = (pos, pos + nbytes)
        pos += nbytes
    if metadata:
        obj[METADATA_KEY] = dict(metadata)
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    raw = text.encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    if data_start is not None:
        remainder, modulus = data_start
        extra = (remainder - 8 - len(raw)) % modulus
        if extra % 8 == 0:
            raw += b" " * extra
    return struct.pack("<Q", len(raw)) + raw, offsets
