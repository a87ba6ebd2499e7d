"""``check``'s config.json checks: vocab_size, the layer count and hidden_size against the
tensors, a tied head against its embedding, the stated dtype against the stored one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..formats.tensorio import TensorInfo
from .check_values import equal_tensors


def check_config(
    config: dict[str, Any], tensors: list[TensorInfo], add: Callable[[str, str, str], None]
) -> None:
    """Report (``add(check, status, detail)``) where config.json disagrees with the tensors."""
    found = 0

    def report_add(check: str, status: str, detail: str) -> None:
        nonlocal found
        found += 1
        add(check, status, detail)

    from ..ops.vocab import EMBEDDING_ENDS, HEAD_ENDS
    from ..plan.selection import config_get, config_layer_count, config_section, find_layer_stacks

    by_name = {t.name: t for t in tensors}
    embeddings = [t for t in tensors if t.name.endswith(EMBEDDING_ENDS) and len(t.shape) == 2]
    for emb in embeddings[:1]:
        base = config_section(config, emb.name)
        vocab = config_get(config, base + "vocab_size")
        if isinstance(vocab, int) and vocab != emb.shape[0]:
            report_add("config", "FAIL", f"{base}vocab_size is {vocab} but {emb.name} has "
                       f"{emb.shape[0]} rows")  # fmt: skip
        hidden = config_get(config, base + "hidden_size")
        if isinstance(hidden, int) and "embedding_size" not in config and hidden != emb.shape[1]:
            report_add("config", "FAIL", f"{base}hidden_size is {hidden} but {emb.name} is "
                       f"{emb.shape[1]} wide")  # fmt: skip
    for stack, indices in find_layer_stacks(list(by_name)).items():
        count = config_layer_count(config, stack)
        if count is not None and (count != len(indices) or indices != list(range(count))):
            report_add("config", "FAIL", f"config.json says {count} layers; {stack} holds "
                       f"{len(indices)} (blocks {indices[0]}..{indices[-1]})")  # fmt: skip
    heads = [t for t in tensors if t.name.endswith(HEAD_ENDS) and len(t.shape) == 2]
    tied = config.get("tie_word_embeddings", True) is not False
    if tied and heads and embeddings:
        head, emb = heads[0], embeddings[0]
        plain = all(t.offset is not None and not t.parts and not t.blocks for t in (head, emb))
        if (head.dtype, head.shape) != (emb.dtype, emb.shape) or (
            plain and not equal_tensors(head, emb)
        ):
            report_add("config", "FAIL", f"tie_word_embeddings is true but {head.name} differs "
                       f"from {emb.name}")  # fmt: skip
    archs = " ".join(config.get("architectures") or [])
    if not tied and not heads and ("LM" in archs or "ForConditionalGeneration" in archs):
        report_add("config", "FAIL", f"tie_word_embeddings is false but no output head is "
                   f"stored for {archs}")  # fmt: skip
    stated = config.get("dtype") or config.get("torch_dtype")
    floats = [t.dtype for t in tensors if t.dtype in _TORCH_NAMES]
    if isinstance(stated, str) and floats:
        common = max(set(floats), key=floats.count)
        if _TORCH_NAMES[common] != stated:
            report_add("config", "warn", f"config.json's dtype is {stated}; the weights are "
                       f"{_TORCH_NAMES[common]}")  # fmt: skip
    if not found:
        add("config", "ok", "vocab_size, layers, hidden_size, tied head and dtype agree "
                   "with the tensors")  # fmt: skip


_TORCH_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}
