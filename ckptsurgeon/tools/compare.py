"""``diff``: compare two checkpoints tensor by tensor, headers first, values chunk by chunk.

Statuses: ``identical`` (same dtype, shape and bytes; found without numeric work), ``close``
(values within ``atol + rtol * |b|`` element-wise), ``changed``, ``shape_mismatch``,
``dtype_mismatch`` (values still compared after upcasting when shapes agree), ``only_in_a``,
``only_in_b``; with ``names_only``, tensors whose header fields agree are ``same_header``.
A NaN or Inf on one side only is always a difference, never silently equal.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..dtypes import has_numeric_view, to_float
from ..formats.checkpoint import Checkpoint, TensorInfo, TensorReader, open_checkpoint
from ..formats.prefixes import WRAPPER_PREFIXES
from ..patterns import as_patterns, raise_no_match, select
from ..pipeline import background
from ..ties import name_ties

STATUSES = (
    "identical",
    "close",
    "same_header",
    "changed",
    "dtype_mismatch",
    "shape_mismatch",
    "only_in_a",
    "only_in_b",
)
NOT_DIFFERENT = {"identical", "close", "same_header"}
CHUNK_ELEMS = 1 << 20


@dataclass(frozen=True)
class TensorDiff:
    name: str
    status: str
    dtype_a: str | None
    dtype_b: str | None
    shape_a: tuple[int, ...] | None
    shape_b: tuple[int, ...] | None
    max_abs: float | None = None
    mean_abs: float | None = None
    rel_l2: float | None = None
    cosine: float | None = None
    nonfinite_mismatch: int = 0
    name_a: str | None = None  # original names, when normalisation renamed them
    name_b: str | None = None

    @property
    def differs(self) -> bool:
        return self.status not in NOT_DIFFERENT

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "status": self.status,
            "dtype_a": self.dtype_a,
            "dtype_b": self.dtype_b,
            "shape_a": list(self.shape_a) if self.shape_a is not None else None,
            "shape_b": list(self.shape_b) if self.shape_b is not None else None,
            "max_abs": self.max_abs,
            "mean_abs": self.mean_abs,
            "rel_l2": self.rel_l2,
            "cosine": self.cosine,
            "nonfinite_mismatch": self.nonfinite_mismatch,
        }
        if self.name_a not in (None, self.name):
            out["name_a"] = self.name_a
        if self.name_b not in (None, self.name):
            out["name_b"] = self.name_b
        return out


@dataclass(frozen=True)
class DiffResult:
    a: Checkpoint
    b: Checkpoint
    tensors: tuple[TensorDiff, ...]  # every compared name, in A's order then B's extras

    @property
    def identical(self) -> bool:
        """True when nothing differs beyond tolerance."""
        return not any(t.differs for t in self.tensors)

    @property
    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.tensors:
            counts[t.status] = counts.get(t.status, 0) + 1
        return {s: counts[s] for s in STATUSES if s in counts}

    def differences(self) -> list[TensorDiff]:
        """Tensors that are not identical (``close`` included; ``same_header`` left out)."""
        return [t for t in self.tensors if t.status not in ("identical", "same_header")]

    def to_json(self, *, include_all: bool = False) -> dict[str, Any]:
        shown = self.tensors if include_all else tuple(self.differences())
        return {
            "identical": self.identical,
            "a": str(self.a.path),
            "b": str(self.b.path),
            "summary": self.summary,
            "tensors": [t.to_json() for t in shown],
        }


def normalize_name(name: str) -> str:
    """``module.``/``_orig_mod.`` prefixes removed, legacy ``gamma``/``beta`` renamed."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
                changed = True
    name = name.replace("._orig_mod.", ".")
    if name.endswith(".gamma"):
        name = name[: -len("gamma")] + "weight"
    elif name.endswith(".beta"):
        name = name[: -len("beta")] + "bias"
    return name


def _name_map(ckpt: Checkpoint, strip_prefix: str | None, normalize: bool) -> dict[str, TensorInfo]:
    """Comparable name -> tensor. Aliases that share storage in a .bin are always folded."""
    out: dict[str, TensorInfo] = {}
    names = [t.name for t in ckpt.tensors if t.name not in ckpt.aliases]
    folded = set(name_ties(names, ckpt.config)) if normalize else set()
    for t in ckpt.tensors:
        if t.name in ckpt.aliases or t.name in folded:
            continue
        key = t.name
        if strip_prefix and key.startswith(strip_prefix):
            key = key[len(strip_prefix) :]
        if normalize:
            key = normalize_name(key)
        out.setdefault(key, t)
    return out


def diff(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str],
    patterns: str | Sequence[str] = (),
    exclude: str | Sequence[str] = (),
    *,
    atol: float = 0.0,
    rtol: float = 0.0,
    names_only: bool = False,
    strip_prefix_a: str | None = None,
    strip_prefix_b: str | None = None,
    normalize: bool = False,
    ignore_dtype: bool = False,
    plot: str | os.PathLike[str] | None = None,
    progress: Callable[[str], None] | None = None,
    on_bytes: Callable[[int, int], None] | None = None,
) -> DiffResult:
    """Compare checkpoints ``a`` and ``b``.

    ``ignore_dtype`` compares values across dtypes (both upcast to float64) and gives them
    ``identical``/``close``/``changed`` by value instead of ``dtype_mismatch``: a correct bf16
    cast is ``close`` within ``atol=1e-2``. ``plot`` also draws the change by layer and module
    to that file (.png, .svg or .html; :func:`ckptsurgeon.write_plot`). ``progress(name)`` is
    called before each tensor is compared, ``on_bytes(bytes_now, total_bytes)`` after (bytes
    of both sides).

    >>> result = diff("bert/", "bert-top3/")        # doctest: +SKIP
    >>> result.summary                              # doctest: +SKIP
    {'identical': 149, 'changed': 50}
    """
    if atol < 0 or rtol < 0 or math.isnan(atol) or math.isnan(rtol):
        from ..errors import SelectionError

        raise SelectionError("tolerances must be >= 0", f"atol={atol}, rtol={rtol}", "fix them")
    patterns, exclude = as_patterns(patterns), as_patterns(exclude)  # a bare string is one
    ca, cb = open_checkpoint(a), open_checkpoint(b)  # headers of both before any data
    map_a = _name_map(ca, strip_prefix_a, normalize)
    map_b = _name_map(cb, strip_prefix_b, normalize)
    names = list(map_a) + [n for n in map_b if n not in map_a]
    order = select(names, list(patterns) or ["*"], exclude, require_match=False)
    if patterns and not order:
        raise_no_match(patterns[0], names)

    results: dict[str, TensorDiff] = {}
    to_compare: list[str] = []
    for name in order:
        ta, tb = map_a.get(name), map_b.get(name)
        if tb is None:
            assert ta is not None
            results[name] = TensorDiff(
                name, "only_in_a", ta.dtype, None, ta.shape, None, name_a=ta.name
            )
        elif ta is None:
            results[name] = TensorDiff(
                name, "only_in_b", None, tb.dtype, None, tb.shape, name_b=tb.name
            )
        elif ta.shape != tb.shape:
            results[name] = _header_diff(name, "shape_mismatch", ta, tb)
        elif names_only:
            status = (
                "dtype_mismatch" if ta.dtype != tb.dtype and not ignore_dtype else "same_header"
            )
            results[name] = _header_diff(name, status, ta, tb)
        else:
            to_compare.append(name)
    if to_compare:
        total = sum(map_a[n].nbytes + map_b[n].nbytes for n in to_compare)
        with ca.reader() as ra, cb.reader() as rb:
            for name in to_compare:
                if progress is not None:
                    progress(name)
                results[name] = compare_tensor(
                    name, map_a[name], map_b[name], ra, rb, atol, rtol, ignore_dtype
                )
                if on_bytes is not None:
                    on_bytes(map_a[name].nbytes + map_b[name].nbytes, total)
    result = DiffResult(ca, cb, tuple(results[n] for n in order))
    if plot is not None:
        from .plot import write_plot

        write_plot(result, plot)
    return result


def _header_diff(name: str, status: str, ta: TensorInfo, tb: TensorInfo) -> TensorDiff:
    return TensorDiff(
        name, status, ta.dtype, tb.dtype, ta.shape, tb.shape, name_a=ta.name, name_b=tb.name
    )


def _chunk_bytes(t: TensorInfo) -> int:
    return CHUNK_ELEMS * max(t.nbytes // max(t.params, 1), 1)


def _same_bytes(x: bytes | memoryview, y: bytes | memoryview) -> bool:
    """memcmp-speed equality: bytes compare directly; memoryview == memoryview would unpack
    element by element (~1 GB/s)."""
    if isinstance(x, memoryview):
        x = x.tobytes()
    if isinstance(y, memoryview):
        y = y.tobytes()
    return x == y


def compare_tensor(
    name: str,
    ta: TensorInfo,
    tb: TensorInfo,
    ra: TensorReader,
    rb: TensorReader,
    atol: float,
    rtol: float,
    ignore_dtype: bool = False,
) -> TensorDiff:
    """One pass: bytes are compared first (no numeric work while they agree); from the first
    differing chunk on, values are decoded and accumulated. Byte-identical leading chunks are
    then re-read once for the norms that the metrics need."""
    same_dtype = ta.dtype == tb.dtype
    numeric = (
        has_numeric_view(ta.dtype)
        and has_numeric_view(tb.dtype)
        and "C64" not in (ta.dtype, tb.dtype)
    )
    gen_a = background(ra.chunks(ta, _chunk_bytes(ta)))
    gen_b = background(rb.chunks(tb, _chunk_bytes(tb)))
    try:
        pairs = zip(gen_a, gen_b, strict=True)
        equal_prefix = 0
        first = None
        if same_dtype:
            for x, y in pairs:
                if not _same_bytes(x, y):
                    first = (x, y)
                    break
                equal_prefix += 1
            else:
                return replace(
                    _header_diff(name, "identical", ta, tb),
                    max_abs=0.0,
                    mean_abs=0.0,
                    rel_l2=0.0,
                    cosine=1.0,
                )
        if not numeric:
            by_value = same_dtype or ignore_dtype
            return _header_diff(name, "changed" if by_value else "dtype_mismatch", ta, tb)
        acc = _Metrics(ta.dtype, tb.dtype, atol, rtol)
        if first is not None:
            acc.add(*first)
        for x, y in pairs:
            acc.add(x, y)
    finally:
        gen_a.close()
        gen_b.close()
    if equal_prefix:
        for k, x in enumerate(ra.chunks(ta, _chunk_bytes(ta))):
            if k >= equal_prefix:
                break
            acc.add_identical(x)
    m = acc.result()
    if not same_dtype and not ignore_dtype:
        status = "dtype_mismatch"
    elif not same_dtype and m["max_abs"] == 0 and m["nonfinite_mismatch"] == 0:
        status = "identical"  # by value, across dtypes
    elif m["within"] and m["nonfinite_mismatch"] == 0:
        status = "close"
    else:
        status = "changed"
    return replace(
        _header_diff(name, status, ta, tb),
        max_abs=m["max_abs"],
        mean_abs=m["mean_abs"],
        rel_l2=m["rel_l2"],
        cosine=m["cosine"],
        nonfinite_mismatch=m["nonfinite_mismatch"],
    )


class _Metrics:
    """Accumulates in float64, chunk by chunk: max/mean |a-b|, ||a-b||/||a||, cosine."""

    def __init__(self, dtype_a: str, dtype_b: str, atol: float, rtol: float) -> None:
        self.dtype_a, self.dtype_b, self.atol, self.rtol = dtype_a, dtype_b, atol, rtol
        self.count = 0
        self.max_abs = 0.0
        self.sum_abs = self.sum_d2 = self.sum_a2 = self.sum_b2 = self.sum_ab = 0.0
        self.mismatch = 0
        self.within = True

    def add_identical(self, raw: bytes | memoryview) -> None:
        """A chunk equal on both sides: it adds only to the count and the norms."""
        import numpy as np

        x = to_float(raw, self.dtype_a)
        finite = np.isfinite(x)
        if not finite.all():
            # equal bytes: the same NaN or Inf on both sides; NaN counts as a difference
            self.mismatch += int(np.isnan(x).sum())
            x = x[finite]
        sq = float(np.dot(x, x))
        self.count += int(x.size)
        self.sum_a2 += sq
        self.sum_b2 += sq
        self.sum_ab += sq

    def add(self, raw_a: bytes | memoryview, raw_b: bytes | memoryview) -> None:
        import numpy as np

        xa = to_float(raw_a, self.dtype_a)
        xb = to_float(raw_b, self.dtype_b)
        sa, sb = float(np.dot(xa, xa)), float(np.dot(xb, xb))
        if not (math.isfinite(sa) and math.isfinite(sb)):
            # a NaN or Inf somewhere: equal only if the very same value (NaN never equals)
            both = np.isfinite(xa) & np.isfinite(xb)
            self.mismatch += int((~both & ~(xa == xb)).sum())
            xa, xb = xa[both], xb[both]
            sa, sb = float(np.dot(xa, xa)), float(np.dot(xb, xb))
        d = xa - xb
        ad = np.abs(d)
        if ad.size:
            self.max_abs = max(self.max_abs, float(ad.max()))
            if self.within:
                limit = self.atol + self.rtol * np.abs(xb) if self.rtol else self.atol
                self.within = bool(np.all(ad <= limit))
        self.count += int(ad.size)
        self.sum_abs += float(ad.sum())
        self.sum_d2 += float(np.dot(d, d))
        self.sum_a2 += sa
        self.sum_b2 += sb
        self.sum_ab += float(np.dot(xa, xb))

    def result(self) -> dict[str, Any]:
        norm_a, norm_b = math.sqrt(self.sum_a2), math.sqrt(self.sum_b2)
        if norm_a > 0:
            rel: float | None = math.sqrt(self.sum_d2) / norm_a
        else:
            rel = 0.0 if self.sum_d2 == 0 else None
        cosine = self.sum_ab / (norm_a * norm_b) if norm_a > 0 and norm_b > 0 else None
        if cosine is not None:
            cosine = max(-1.0, min(1.0, cosine))
        return {
            "max_abs": self.max_abs,
            "mean_abs": self.sum_abs / self.count if self.count else 0.0,
            "rel_l2": rel,
            "cosine": cosine,
            "nonfinite_mismatch": self.mismatch,
            "within": self.within,
        }
