"""``inspect``: what is inside a checkpoint, from headers; optional streaming statistics."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..dtypes import has_numeric_view, to_float
from ..formats.checkpoint import Checkpoint, TensorInfo, open_checkpoint
from ..patterns import as_patterns, select


@dataclass(frozen=True)
class TensorStats:
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    nan: int
    inf: int

    def to_json(self) -> dict[str, Any]:
        return {
            "mean": self.mean,
            "std": self.std,
            "min": self.min,
            "max": self.max,
            "nan": self.nan,
            "inf": self.inf,
        }


@dataclass(frozen=True)
class Inspection:
    checkpoint: Checkpoint
    tensors: tuple[TensorInfo, ...]
    stats: dict[str, TensorStats] | None = None

    def _stored(self) -> list[TensorInfo]:
        """The listed tensors, each tied group once (an alias shares its canonical's bytes)."""
        return [t for t in self.tensors if t.name not in self.checkpoint.aliases]

    @property
    def total_params(self) -> int:
        return sum(t.params for t in self._stored())

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self._stored())

    @property
    def tied(self) -> dict[str, str]:
        """``{alias: canonical}`` for the listed tensors that share storage with another."""
        listed = {t.name for t in self.tensors}
        return {a: c for a, c in sorted(self.checkpoint.aliases.items()) if a in listed}

    @property
    def dtypes(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.tensors:
            counts[t.dtype] = counts.get(t.dtype, 0) + 1
        return dict(sorted(counts.items()))

    def to_json(self) -> dict[str, Any]:
        ckpt = self.checkpoint
        rows = []
        for t in self.tensors:
            row: dict[str, Any] = {
                "name": t.name,
                "dtype": t.dtype,
                "shape": list(t.shape),
                "params": t.params,
            }
            if t.name in ckpt.aliases:
                row["tied_to"] = ckpt.aliases[t.name]
            if self.stats is not None:
                row.update(self.stats[t.name].to_json())
            rows.append(row)
        return {
            "format": ckpt.format,
            "detail": ckpt.detail or None,
            "ranks": ckpt.ranks or None,
            "not_read": list(ckpt.not_read),
            "sharded": ckpt.sharded,
            "files": [str(f) for f in ckpt.files],
            "index": str(ckpt.index_file) if ckpt.index_file else None,
            "metadata": ckpt.metadata,
            "total_params": self.total_params,
            "total_bytes": self.total_bytes,
            "dtypes": self.dtypes,
            "tied": self.tied,
            "tensors": rows,
        }


def inspect(
    src: str | os.PathLike[str],
    patterns: str | Sequence[str] = (),
    *,
    stats: bool = False,
    progress: Callable[[str], None] | None = None,
    on_bytes: Callable[[int, int], None] | None = None,
    revision: str | None = None,
) -> Inspection:
    """List a checkpoint's tensors (headers only), optionally with per-tensor statistics.

    >>> info = inspect("my-bert", ["*.pooler.*"])  # doctest: +SKIP
    >>> [t.name for t in info.tensors]             # doctest: +SKIP
    ['bert.pooler.dense.weight', 'bert.pooler.dense.bias']
    """
    ckpt = open_checkpoint(src, revision)
    patterns = as_patterns(patterns)
    names = select(ckpt.names, patterns) if patterns else ckpt.names
    wanted = set(names)
    tensors = tuple(t for t in ckpt.tensors if t.name in wanted)
    table = None
    if stats:
        table = {}
        total = sum(t.nbytes for t in tensors)
        with ckpt.reader() as reader:
            for t in tensors:
                if progress is not None:
                    progress(t.name)
                table[t.name] = tensor_stats(reader.chunks(t), t)
                if on_bytes is not None:
                    on_bytes(t.nbytes, total)
    return Inspection(ckpt, tensors, table)


def tensor_stats(chunks: Any, info: TensorInfo) -> TensorStats:
    """Mean, std, min, max and NaN/Inf counts in one streaming pass (float64 accumulators)."""
    import numpy as np

    if not has_numeric_view(info.dtype) or info.dtype == "C64":
        for _ in chunks:  # still read, so corrupt data is noticed
            pass
        return TensorStats(None, None, None, None, 0, 0)
    count = 0
    total = 0.0
    total_sq = 0.0
    lo, hi = math.inf, -math.inf
    nan = inf = 0
    shift: float | None = None  # subtract a first value to keep the variance accurate
    for chunk in chunks:
        values = to_float(chunk, info.dtype)
        if values.size == 0:
            continue
        bad_nan = np.isnan(values)
        bad_inf = np.isinf(values)
        nan += int(bad_nan.sum())
        inf += int(bad_inf.sum())
        finite = values[~(bad_nan | bad_inf)] if (nan or inf) else values
        if finite.size == 0:
            continue
        if shift is None:
            shift = float(finite[0])
        centred = finite - shift
        count += finite.size
        total += float(centred.sum())
        total_sq += float(np.dot(centred, centred))
        lo = min(lo, float(finite.min()))
        hi = max(hi, float(finite.max()))
    if count == 0:
        return TensorStats(None, None, None, None, nan, inf)
    assert shift is not None
    mean_c = total / count
    var = max(total_sq / count - mean_c * mean_c, 0.0)
    return TensorStats(mean_c + shift, math.sqrt(var), lo, hi, nan, inf)
