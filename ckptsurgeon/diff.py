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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .checkpoint import Checkpoint, TensorInfo, TensorReader, open_checkpoint
from .dtypes import has_numeric_view, to_float
from .patterns import expand_braces
from .ties import name_ties

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
        for prefix in ("module.", "_orig_mod."):
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


def _selected(name: str, include: list[str], exclude: list[str]) -> bool:
    from fnmatch import fnmatchcase

    if include and not any(fnmatchcase(name, p) for p in include):
        return False
    return not any(fnmatchcase(name, p) for p in exclude)


def diff(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str],
    patterns: Sequence[str] = (),
    exclude: Sequence[str] = (),
    *,
    atol: float = 0.0,
    rtol: float = 0.0,
    names_only: bool = False,
    strip_prefix_a: str | None = None,
    strip_prefix_b: str | None = None,
    normalize: bool = False,
    progress: Callable[[str], None] | None = None,
) -> DiffResult:
    """Compare checkpoints ``a`` and ``b``.

    >>> result = diff("bert/", "bert-top3/")        # doctest: +SKIP
    >>> result.summary                              # doctest: +SKIP
    {'identical': 149, 'changed': 50}
    """
    if atol < 0 or rtol < 0 or math.isnan(atol) or math.isnan(rtol):
        from .errors import SelectionError

        raise SelectionError("tolerances must be >= 0", f"atol={atol}, rtol={rtol}", "fix them")
    ca, cb = open_checkpoint(a), open_checkpoint(b)  # headers of both before any data
    map_a = _name_map(ca, strip_prefix_a, normalize)
    map_b = _name_map(cb, strip_prefix_b, normalize)
    include = [g for p in patterns for g in expand_braces(p)]
    excl = [g for p in exclude for g in expand_braces(p)]
    order = [n for n in map_a if _selected(n, include, excl)]
    order += [n for n in map_b if n not in map_a and _selected(n, include, excl)]
    if include and not order:
        from .patterns import raise_no_match

        raise_no_match(patterns[0], list(map_a) + list(map_b))

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
            status = "dtype_mismatch" if ta.dtype != tb.dtype else "same_header"
            results[name] = _header_diff(name, status, ta, tb)
        else:
            to_compare.append(name)
    if to_compare:
        with ca.reader() as ra, cb.reader() as rb:
            for name in to_compare:
                if progress is not None:
                    progress(name)
                results[name] = compare_tensor(name, map_a[name], map_b[name], ra, rb, atol, rtol)
    return DiffResult(ca, cb, tuple(results[n] for n in order))


def _header_diff(name: str, status: str, ta: TensorInfo, tb: TensorInfo) -> TensorDiff:
    return TensorDiff(
        name, status, ta.dtype, tb.dtype, ta.shape, tb.shape, name_a=ta.name, name_b=tb.name
    )


def _paired_chunks(
    ta: TensorInfo, tb: TensorInfo, ra: TensorReader, rb: TensorReader
) -> Iterator[tuple[memoryview, memoryview]]:
    """Chunks of both tensors covering the same elements."""
    size_a = ta.nbytes // max(ta.params, 1)
    size_b = tb.nbytes // max(tb.params, 1)
    ia = ra.chunks(ta, CHUNK_ELEMS * max(size_a, 1))
    ib = rb.chunks(tb, CHUNK_ELEMS * max(size_b, 1))
    yield from zip(ia, ib, strict=True)


def compare_tensor(
    name: str,
    ta: TensorInfo,
    tb: TensorInfo,
    ra: TensorReader,
    rb: TensorReader,
    atol: float,
    rtol: float,
) -> TensorDiff:
    same_dtype = ta.dtype == tb.dtype
    if same_dtype and all(bytes(x) == bytes(y) for x, y in _paired_chunks(ta, tb, ra, rb)):
        return replace(
            _header_diff(name, "identical", ta, tb),
            max_abs=0.0,
            mean_abs=0.0,
            rel_l2=0.0,
            cosine=1.0,
        )
    numeric = (
        has_numeric_view(ta.dtype)
        and has_numeric_view(tb.dtype)
        and "C64" not in (ta.dtype, tb.dtype)
    )
    if not numeric:
        return _header_diff(name, "changed" if same_dtype else "dtype_mismatch", ta, tb)
    m = _metrics(_paired_chunks(ta, tb, ra, rb), ta.dtype, tb.dtype, atol, rtol)
    if not same_dtype:
        status = "dtype_mismatch"
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


def _metrics(
    pairs: Iterator[tuple[memoryview, memoryview]],
    dtype_a: str,
    dtype_b: str,
    atol: float,
    rtol: float,
) -> dict[str, Any]:
    """Accumulate in float64, chunk by chunk: max/mean |a-b|, ||a-b||/||a||, cosine."""
    import numpy as np

    count = 0
    max_abs = 0.0
    sum_abs = 0.0
    sum_d2 = sum_a2 = sum_b2 = sum_ab = 0.0
    mismatch = 0
    within = True
    for raw_a, raw_b in pairs:
        xa = to_float(raw_a, dtype_a)
        xb = to_float(raw_b, dtype_b)
        fa, fb = np.isfinite(xa), np.isfinite(xb)
        both = fa & fb
        if not both.all():
            # non-finite on either side: equal only if the very same value (NaN never equals)
            same = ~both & (xa == xb)
            mismatch += int((~both & ~same).sum())
            xa, xb = xa[both], xb[both]
        d = xa - xb
        ad = np.abs(d)
        if ad.size:
            max_abs = max(max_abs, float(ad.max()))
            if within and not bool(np.all(ad <= atol + rtol * np.abs(xb))):
                within = False
        count += int(ad.size)
        sum_abs += float(ad.sum())
        sum_d2 += float(np.dot(d, d))
        sum_a2 += float(np.dot(xa, xa))
        sum_b2 += float(np.dot(xb, xb))
        sum_ab += float(np.dot(xa, xb))
    norm_a, norm_b = math.sqrt(sum_a2), math.sqrt(sum_b2)
    rel = math.sqrt(sum_d2) / norm_a if norm_a > 0 else (0.0 if sum_d2 == 0 else None)
    cosine = sum_ab / (norm_a * norm_b) if norm_a > 0 and norm_b > 0 else None
    if cosine is not None:
        cosine = max(-1.0, min(1.0, cosine))
    return {
        "max_abs": max_abs,
        "mean_abs": sum_abs / count if count else 0.0,
        "rel_l2": rel,
        "cosine": cosine,
        "nonfinite_mismatch": mismatch,
        "within": within,
    }
