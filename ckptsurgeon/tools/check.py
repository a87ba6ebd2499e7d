"""``check``: are a checkpoint's files whole, consistent and finite? Torch-free, at the speed of
reading the files once.

Each check reports ``ok``, ``warn`` or ``FAIL`` (naming the file or tensor): **files** (every
safetensors header parses; data offsets cover each byte buffer exactly; dtype x shape = bytes;
a sharded index names exactly its shards and their tensors, each once, with the right
``total_size``, and no stray weight file lies beside it), **values** (NaN and Inf per floating
tensor: FAIL; a weight matrix entirely zero: warn), **config** (``vocab_size``, the layer count
and ``hidden_size`` against the tensors, a tied head against the embedding, the dtype) and, with
a manifest, **manifest** (every file's sha256 and size). The values are scanned chunk by chunk
on worker threads while the reading thread hashes the same bytes for the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..dtypes import DTYPES
from ..errors import CheckpointNotFoundError, CkptSurgeonError, ConfigError
from ..formats.checkpoint import (
    SAFE_INDEX,
    SAFE_SINGLE,
    Checkpoint,
    TensorInfo,
    open_checkpoint,
)
from ..formats.config_json import read_config
from ..formats.hf_files import check_shard_name
from ..formats.safetensors import read_header
from ..pipeline import ordered_map, usable_cpus
from .check_config import check_config
from .check_values import CHUNK, Tally, scan

PathLike = str | os.PathLike[str]
_INVALID = "not a valid safetensors file: "


@dataclass(frozen=True)
class Finding:
    check: str  # files, values, config, manifest
    status: str  # ok, warn, FAIL
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"check": self.check, "status": self.status, "detail": self.detail}


@dataclass(frozen=True)
class CheckResult:
    path: str
    findings: tuple[Finding, ...]
    manifest: dict[str, dict[str, Any]] = field(repr=False, default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(f.status == "FAIL" for f in self.findings)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ok": self.ok,
            "checks": [f.to_json() for f in self.findings],
        }


class _Report:
    def __init__(self) -> None:
        self.findings: list[Finding] = []

    def add(self, check: str, status: str, detail: str) -> None:
        self.findings.append(Finding(check, status, detail))


def check(
    src: PathLike,
    *,
    write_manifest: PathLike | None = None,
    manifest: PathLike | None = None,
    threads: int | None = None,
    revision: str | None = None,
    on_bytes: Callable[[int, int], None] | None = None,
) -> CheckResult:
    """Check SRC (any kind ckptsurgeon reads; safetensors most deeply) without torch. Raises
    only when it cannot run (no such path, no weights); every problem it finds is a Finding."""
    path = Path(src)
    if not path.exists() or revision is not None:
        from ..formats.hub import resolve

        path = resolve(src, revision)
    skip = {Path(p).resolve() for p in (write_manifest, manifest) if p is not None}
    report = _Report()
    tensors, weight_files, config, other = _files(path, report)
    if other is not None:  # a torch file or a training checkpoint: through its reader
        _values_through(other, report, threads)
        hashes: dict[str, str] = {}
    else:
        hashing = manifest is not None or write_manifest is not None
        hashes = _values(tensors, weight_files, report, threads, on_bytes, hashing)
    if config is not None:
        check_config(config, tensors, report.add)
    table: dict[str, dict[str, Any]] = {}
    if manifest is not None or write_manifest is not None:
        for rel, f in _all_files(path, skip).items():
            digest = hashes.get(str(f)) or _sha256(f)
            table[rel] = {"sha256": digest, "size": f.stat().st_size}
    if manifest is not None:
        _against_manifest(Path(manifest), table, report)
    if write_manifest is not None:
        text = json.dumps({"files": dict(sorted(table.items()))}, indent=2, sort_keys=True)
        target = Path(write_manifest)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, target)
    return CheckResult(str(path), tuple(report.findings), table)


# ---------------------------------------------------------------------------------------------
# files


def _files(
    path: Path, report: _Report
) -> tuple[list[TensorInfo], list[Path], dict[str, Any] | None, Checkpoint | None]:
    """The tensors of the files that parse, the weight files, config.json (None if absent or
    broken; broken is a FAIL), and the opened checkpoint when it is not safetensors."""
    folder = path if path.is_dir() else path.parent
    config: dict[str, Any] | None = None
    config_error: ConfigError | None = None
    if (folder / "config.json").is_file():
        config, config_error = read_config(folder / "config.json")
        if config_error is not None:
            report.add("config", "FAIL", config_error.message)
    index = path / SAFE_INDEX if path.is_dir() else path
    single = path / SAFE_SINGLE if path.is_dir() else path
    if index.name.endswith(".safetensors.index.json") and index.is_file():
        return (*_sharded(index, report), config, None)
    if single.name.endswith(".safetensors") and single.is_file():
        return (*_single_files([single], report), config, None)
    try:  # other kinds: what their readers check
        ckpt = open_checkpoint(path)
    except CheckpointNotFoundError:
        raise
    except CkptSurgeonError as exc:
        report.add("files", "FAIL", exc.message)
        return [], [], config, None
    report.add("files", "ok", f"{ckpt.format}: {len(ckpt.files)} file(s), {len(ckpt.tensors)} "
               "tensors (read by its format's reader)")  # fmt: skip
    return list(ckpt.tensors), [], ckpt.config, ckpt


def _single_files(files: list[Path], report: _Report) -> tuple[list[TensorInfo], list[Path]]:
    tensors: list[TensorInfo] = []
    good: list[Path] = []
    for f in files:
        try:
            h = read_header(f)
        except CkptSurgeonError as exc:
            report.add("files", "FAIL", f"{f.name}: {exc.what.removeprefix(_INVALID)}")
            continue
        good.append(f)
        tensors += [
            TensorInfo(e.name, e.dtype, e.shape, e.end - e.begin, str(f), h.data_start + e.begin)
            for e in h.entries
        ]
    if len(good) == len(files):
        size = sum(f.stat().st_size for f in files)
        report.add("files", "ok", f"{len(files)} file(s), {len(tensors)} tensors, {size:,} bytes: "
                   "headers parse, data covered exactly")  # fmt: skip
    return tensors, good


def _sharded(index: Path, report: _Report) -> tuple[list[TensorInfo], list[Path]]:
    try:
        obj = json.loads(index.read_text(encoding="utf-8"))
        weight_map = obj["weight_map"]
        assert isinstance(weight_map, dict)
    except (ValueError, KeyError, TypeError, AssertionError, UnicodeDecodeError):
        report.add("files", "FAIL", f"{index.name}: not an index (no weight_map object)")
        return [], []
    shards: list[str] = []
    for shard in weight_map.values():
        try:
            check_shard_name(index, shard)
        except CkptSurgeonError as exc:
            report.add("files", "FAIL", exc.message)
            return [], []
        if shard not in shards:
            shards.append(shard)
    present = [s for s in shards if (index.parent / s).is_file()]
    for s in shards:
        if s not in present:
            report.add("files", "FAIL", f"shard {s} listed in {index.name} is missing")
    tensors, good = _single_files([index.parent / s for s in present], report)
    where: dict[str, str] = {}
    for t in tensors:
        shard = Path(t.file).name
        if t.name in where:
            report.add("files", "FAIL", f"tensor {t.name!r} is in {where[t.name]} and {shard}")
        where[t.name] = shard
        listed = weight_map.get(t.name)
        if listed != shard:
            said = "does not list it" if listed is None else f"maps it to {listed}"
            report.add("files", "FAIL", f"tensor {t.name!r} is in {shard}; {index.name} {said}")
    for name, shard in weight_map.items():
        if name not in where and (index.parent / shard).is_file() and index.parent / shard in good:
            report.add("files", "FAIL", f"tensor {name!r} is listed in {index.name} but not in "
                       f"{shard}")  # fmt: skip
    total = (obj.get("metadata") or {}).get("total_size") if isinstance(obj, dict) else None
    stored = sum(t.nbytes for t in tensors)
    if total is not None and len(good) == len(shards) and total != stored:
        report.add("files", "FAIL", f"{index.name}: total_size {total} but its tensors hold "
                   f"{stored} bytes")  # fmt: skip
    stray = sorted(
        f.name
        for f in index.parent.iterdir()
        if f.name.endswith(".safetensors") and f.name not in shards and f.is_file()
    )
    if stray:
        report.add("files", "FAIL", f"weight files beside the index that it does not list: "
                   f"{', '.join(stray)}")  # fmt: skip
    return tensors, good


# ---------------------------------------------------------------------------------------------
# values and hashes, in one read


def _values(
    tensors: list[TensorInfo],
    files: list[Path],
    report: _Report,
    threads: int | None,
    on_bytes: Callable[[int, int], None] | None,
    hashing: bool,
) -> dict[str, str]:
    """Scan every floating tensor of ``files`` (NaN, Inf, all zero) while hashing each file in
    the same read; returns each file's sha256."""
    tallies: dict[str, Tally] = {}
    hashes: dict[str, str] = {}
    total = sum(f.stat().st_size for f in files)
    done = 0
    for f in files:
        mine = sorted((t for t in tensors if t.file == str(f)), key=lambda t: t.offset or 0)
        digest = hashlib.sha256() if hashing else None
        workers = threads or usable_cpus()
        pieces = _pieces(f, mine, digest, 2 * workers + 2)
        for chunk_tallies, n in ordered_map(scan, pieces, workers):
            for name, tally in chunk_tallies:
                tallies.setdefault(name, Tally()).merge(tally)
            done += n
            if on_bytes is not None:
                on_bytes(n, total)
        if digest is not None:
            hashes[str(f)] = digest.hexdigest()
    if files:
        _judge(tensors, tallies, report)
    return hashes


def _judge(tensors: list[TensorInfo], tallies: dict[str, Tally], report: _Report) -> None:
    bad = 0
    for t in tensors:
        tally = tallies.get(t.name)
        if tally is None:
            continue
        if tally.nan or tally.inf:
            bad += 1
            report.add("values", "FAIL", f"{t.name}: {tally.nan:,} NaN, {tally.inf:,} Inf")
        elif len(t.shape) >= 2 and t.name.endswith("weight") and tally.nonzero == 0 and t.nbytes:
            report.add("values", "warn", f"{t.name}: every value is zero")
    if not bad:
        scanned = sum(1 for t in tensors if t.name in tallies)
        report.add("values", "ok", f"{scanned} floating tensors, no NaN or Inf")


def _values_through(ckpt: Checkpoint, report: _Report, threads: int | None) -> None:
    """The value scan of a checkpoint that is not safetensors, tensor by tensor."""
    tallies: dict[str, Tally] = {}

    def chunks() -> Iterator[tuple[list[tuple[TensorInfo, bytes]], int]]:
        with ckpt.reader() as reader:
            for t in ckpt.tensors:
                if t.name in ckpt.aliases:
                    continue
                for chunk in reader.chunks(t, CHUNK):
                    yield [(t, bytes(chunk))], len(chunk)

    for chunk_tallies, _ in ordered_map(scan, chunks(), threads):
        for name, tally in chunk_tallies:
            tallies.setdefault(name, Tally()).merge(tally)
    _judge(ckpt.tensors, tallies, report)


def _pieces(
    f: Path, tensors: list[TensorInfo], digest: Any, ring: int
) -> Iterator[tuple[list[tuple[TensorInfo, bytes | memoryview]], int]]:
    """The file in chunks (hashed here, in order), each cut into the tensors it holds, whole
    elements only (an element split by a chunk boundary is carried to the next chunk). Chunks
    are read into a ring of ``ring`` reused buffers: more than the scans in flight."""
    buffers = [bytearray(CHUNK) for _ in range(ring)]
    carry: dict[str, bytes] = {}
    with open(f, "rb", buffering=0) as fh:
        pos = 0
        i = 0
        k = 0
        while True:
            buffer = buffers[k % ring]
            k += 1
            size = fh.readinto(buffer)
            if not size:
                return
            data = memoryview(buffer)[:size]
            if digest is not None:
                digest.update(data)
            cut: list[tuple[TensorInfo, bytes | memoryview]] = []
            end = pos + size
            while i < len(tensors):
                t = tensors[i]
                begin = t.offset or 0
                stop = begin + t.nbytes
                lo, hi = max(begin, pos), min(stop, end)
                if lo < hi:
                    piece: bytes | memoryview = data[lo - pos : hi - pos]
                    if t.name in carry:
                        piece = carry.pop(t.name) + bytes(piece)
                    whole = len(piece) - len(piece) % DTYPES[t.dtype].itemsize
                    if whole < len(piece):
                        carry[t.name] = bytes(piece[whole:])
                    cut.append((t, piece[:whole]))
                if stop > end:
                    break
                i += 1
            pos = end
            yield cut, size


def _sha256(f: Path) -> str:
    digest = hashlib.sha256()
    with open(f, "rb") as fh:
        while data := fh.read(CHUNK):
            digest.update(data)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# manifest


def _all_files(path: Path, skip: set[Path]) -> dict[str, Path]:
    """Every regular file of the checkpoint, by path relative to it (a file SRC: itself)."""
    if not path.is_dir():
        return {path.name: path}
    out = {}
    for f in sorted(path.rglob("*")):
        if f.is_file() and not f.is_symlink() and f.resolve() not in skip:
            out[f.relative_to(path).as_posix()] = f
    return out


def _against_manifest(manifest: Path, table: dict[str, dict[str, Any]], report: _Report) -> None:
    try:
        listed = json.loads(manifest.read_text(encoding="utf-8"))["files"]
        assert isinstance(listed, dict)
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as exc:
        raise CheckpointNotFoundError(
            f"cannot read the manifest ({type(exc).__name__})",
            str(manifest),
            "give a file written by check --write-manifest",
        ) from None
    before = len(report.findings)
    for rel, want in sorted(listed.items()):
        got = table.get(rel)
        if got is None:
            report.add("manifest", "FAIL", f"{rel} is missing")
        elif got != want:
            what = "size" if got.get("size") != want.get("size") else "sha256"
            report.add("manifest", "FAIL", f"{rel} changed ({what} differs from the manifest)")
    for rel in sorted(set(table) - set(listed)):
        report.add("manifest", "warn", f"{rel} is not in the manifest")
    if len(report.findings) == before:
        report.add("manifest", "ok", f"{len(listed)} files match {manifest.name}")
