"""BERT-family initialisation rules and the deterministic random streams that fill tensors.

The rules match transformers' ``_init_weights`` for BERT, RoBERTa, DistilBERT and ELECTRA in
distribution (see docs/FACTS.md): LayerNorm weight 1 and bias 0, every other bias 0, embedding
matrices N(0, std) with the padding row zeroed where the model zeroes it, every other floating
weight of rank >= 2 N(0, std).

Seeds: a tensor's values depend only on ``(seed, tensor name)``. The tensor is cut into fixed
chunks of ``CHUNK_ELEMS`` elements and chunk ``k`` is drawn from its own SFC64 stream seeded
with ``SeedSequence([seed, sha256(name)..., k])``. So the same tensor gets the same values
whatever else is selected, however the output is sharded, and however many threads draw the
chunks. Normal values come from the Box-Muller transform of 24-bit uniforms, vectorised in
float32 (about 3x faster than numpy's ziggurat here); they are scaled by std in float32 and
rounded (to nearest even) into the tensor's dtype.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..dtypes import DTYPES, from_float32, numel_of
from ..errors import InitRuleError
from ..pipeline import ordered_map

CHUNK_ELEMS = 1 << 20  # part of the seed contract: changing it changes every value
DEFAULT_STD = 0.02
ROBERTA_FAMILY = {
    "roberta",
    "xlm-roberta",
    "xlm-roberta-xl",
    "camembert",
    "roberta-prelayernorm",
    "data2vec-text",
    "xmod",
    "longformer",
}
_LAYERNORM_RE = re.compile(r"layer_?norm", re.IGNORECASE)


@dataclass(frozen=True)
class Rule:
    """How to fill one tensor: ``ones``, ``zeros`` or ``normal`` (optionally a zero row); the
    model's own rules (``--rules model``) add ``constant``, ``uniform`` and ``trunc_normal``,
    a ``mean``, rows set to constants, and the ``label`` the model's calls gave them."""

    kind: str
    std: float = 0.0
    zero_row: int | None = None
    mean: float = 0.0
    low: float = 0.0  # uniform and trunc_normal bounds
    high: float = 0.0
    value: float = 0.0  # constant
    rows: tuple[tuple[int, float], ...] = ()  # rows set to a constant after the draw
    label: str = ""

    def describe(self) -> str:
        if self.label:
            return self.label
        if self.kind == "normal":
            text = f"normal(0, {self.std:g})"
            if self.zero_row is not None:
                text += f", row {self.zero_row} zeroed"
            return text
        return self.kind


class Skip(Exception):
    """Raised by :func:`rule_for` for tensors that are never re-initialised (integer buffers)."""


def model_type(config: dict[str, Any] | None) -> str:
    return str((config or {}).get("model_type") or "")


def roberta_like(config: dict[str, Any] | None, first_name_part: str = "") -> bool:
    """RoBERTa-family padding rules apply: by ``model_type``, else by ``architectures``
    (old fastNLP and fairseq exports carry ``RobertaModel`` but no model_type), else by the
    ``roberta.`` name prefix."""
    if model_type(config) in ROBERTA_FAMILY or first_name_part == "roberta":
        return True
    archs = (config or {}).get("architectures")
    if not isinstance(archs, list):
        return False
    families = tuple(f.replace("-", "") for f in ROBERTA_FAMILY)
    return any(isinstance(a, str) and a.lower().startswith(families) for a in archs)


def std_from(config: dict[str, Any] | None, override: float | None) -> float:
    if override is not None:
        return float(override)
    value = (config or {}).get("initializer_range")
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return DEFAULT_STD  # missing, or 0.0 which transformers 5 also turns into 0.02


def rule_for(
    name: str,
    dtype: str,
    shape: tuple[int, ...],
    config: dict[str, Any] | None,
    std: float,
) -> Rule:
    """The rule for one tensor, from its name, dtype and shape (and the config's pad token)."""
    kind = DTYPES[dtype].kind
    if kind in ("int", "uint", "bool"):
        raise Skip(f"{dtype} buffer, never re-initialised")
    if kind != "float":
        raise InitRuleError(
            f"no re-initialisation rule for dtype {dtype}",
            name,
            "exclude it with -x (its bytes are then copied unchanged)",
        )
    parts = name.split(".")
    leaf = parts[-1]
    module = parts[-2] if len(parts) > 1 else ""
    if _LAYERNORM_RE.search(module):
        if leaf in ("weight", "gamma"):
            return Rule("ones")
        if leaf in ("bias", "beta"):
            return Rule("zeros")
    if leaf == "bias" or leaf.endswith("_bias"):
        return Rule("zeros")
    if leaf == "weight" and module.endswith("embeddings") and len(shape) == 2:
        cfg = config or {}
        mtype = model_type(cfg)
        roberta = roberta_like(cfg, parts[0])
        if (
            module == "position_embeddings"
            and (mtype == "distilbert" or parts[0] == "distilbert")
            and cfg.get("sinusoidal_pos_embds")
        ):
            raise InitRuleError(
                "DistilBERT sinusoidal position table has no random re-initialisation rule",
                name,
                "exclude it with -x; transformers recomputes it, it is not learned",
            )
        pad: int | None = None
        if module == "word_embeddings" or (module == "position_embeddings" and roberta):
            default_pad = 1 if roberta else 0
            raw = cfg.get("pad_token_id", default_pad)
            pad = raw if isinstance(raw, int) and not isinstance(raw, bool) else None
            if pad is not None and not 0 <= pad < shape[0]:
                pad = None
        return Rule("normal", std, pad)
    if len(shape) >= 2 and leaf in ("weight", "gamma", "kernel"):
        return Rule("normal", std)
    raise InitRuleError(
        f"no re-initialisation rule for a {len(shape)}-d tensor named like this",
        name,
        "exclude it with -x, or select only weights, biases and LayerNorm parameters",
    )


def _name_words(name: str) -> list[int]:
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 32, 4)]


_BLOCK = 1 << 16  # Box-Muller block: small enough to stay in cache


def _box_muller_into(bits: Any, out: Any) -> None:
    """Fill ``out`` (float32, even length) with N(0, 1) values from the bit generator."""
    import numpy as np

    half = out.size // 2
    raw = bits.random_raw(half).view(np.uint32)  # out.size 32-bit words
    raw >>= np.uint32(8)  # 24-bit uniforms, exact in float32
    np.multiply(raw, np.float32(1.0 / (1 << 24)), out=out, dtype=np.float32, casting="unsafe")
    radius, angle = out[:half], out[half:]
    np.subtract(np.float32(1.0), radius, out=radius)  # (0, 1]: log is finite
    np.log(radius, out=radius)
    radius *= np.float32(-2.0)
    np.sqrt(radius, out=radius)
    angle *= np.float32(2.0 * np.pi)
    sine = np.sin(angle)
    np.cos(angle, out=angle)
    angle *= radius  # r cos(theta)
    radius *= sine  # r sin(theta)


def _chunk_values(seed: int, words: list[int], k: int, n: int, std: float) -> Any:
    """Chunk ``k`` of a tensor's stream: ``n`` float32 values ~ N(0, std)."""
    import numpy as np

    bits = np.random.SFC64(np.random.SeedSequence([seed, *words, k]))
    values = np.empty(n + (n & 1), dtype=np.float32)
    for start in range(0, values.size, _BLOCK):
        _box_muller_into(bits, values[start : start + _BLOCK])
    values = values[:n]
    values *= np.float32(std)
    return values


def _values(rule: Rule, seed: int, words: list[int], k: int, n: int) -> Any:
    """Chunk ``k`` of a tensor's values under ``rule``, float32."""
    import numpy as np

    if rule.kind in ("ones", "zeros", "constant"):
        fill = {"ones": 1.0, "zeros": 0.0}.get(rule.kind, rule.value)
        return np.full(n, np.float32(fill), dtype=np.float32)
    if rule.kind == "uniform":
        bits = np.random.SFC64(np.random.SeedSequence([seed, *words, k, 1]))
        raw = bits.random_raw(-(-n // 2)).view(np.uint32)[:n] >> np.uint32(8)
        values = raw.astype(np.float32) * np.float32(1.0 / (1 << 24))
        values *= np.float32(rule.high - rule.low)
        values += np.float32(rule.low)
        return values
    values = _chunk_values(seed, words, k, n, rule.std)
    if rule.mean:
        values += np.float32(rule.mean)
    if rule.kind == "trunc_normal":
        _redraw_outside(values, rule, seed, words, k)
    return values


def _redraw_outside(values: Any, rule: Rule, seed: int, words: list[int], k: int) -> None:
    """Truncate by rejection: values outside [low, high] are drawn again from the chunk's own
    further streams (a bounded number of rounds, then clipped: with bounds two deviations out,
    5% are redrawn once and none survives eight rounds)."""
    import numpy as np

    for attempt in range(2, 34):
        outside = np.flatnonzero((values < rule.low) | (values > rule.high))
        if outside.size == 0:
            return
        more = _chunk_values(seed, [*words, attempt], k, outside.size, rule.std)
        if rule.mean:
            more += np.float32(rule.mean)
        values[outside] = more
    np.clip(values, rule.low, rule.high, out=values)


def generate(
    name: str,
    dtype: str,
    shape: tuple[int, ...],
    rule: Rule,
    seed: int,
    threads: int | None = None,
) -> Iterator[bytes | memoryview]:
    """Yield the bytes of a re-initialised tensor, chunk by chunk, in order.

    Memory stays at a few chunks whatever the tensor size; ``threads`` draws chunks in parallel
    without changing a single value.
    """

    numel = numel_of(shape)
    if numel == 0:
        return
    words = _name_words(name)
    row = numel // shape[0] if shape and shape[0] else 0
    rows = list(rule.rows) + ([(rule.zero_row, 0.0)] if rule.zero_row is not None else [])
    spans = [(r * row, (r + 1) * row, v) for r, v in rows]
    n_chunks = -(-numel // CHUNK_ELEMS)

    def make(k: int) -> bytes | memoryview:
        start = k * CHUNK_ELEMS
        n = min(CHUNK_ELEMS, numel - start)
        values = _values(rule, seed, words, k, n)
        for lo, hi, v in spans:
            lo, hi = max(lo, start), min(hi, start + n)
            if lo < hi:
                values[lo - start : hi - start] = v
        return from_float32(values, dtype)

    yield from ordered_map(make, range(n_chunks), threads if n_chunks > 1 else 1)
