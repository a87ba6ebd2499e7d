"""ckptsurgeon: offline surgery on transformer checkpoints.

Read any common checkpoint layout, select tensors by pattern, drop or re-initialise them with
BERT's rules, and write a byte-deterministic safetensors checkpoint that stock
``from_pretrained`` loads.

>>> import ckptsurgeon
>>> ckptsurgeon.reinit("bert/", "bert-top3/", top_layers=3, pooler=True)  # doctest: +SKIP
"""

from __future__ import annotations

import typing as _typing

from .errors import (
    CheckpointNotFoundError,
    CkptSurgeonError,
    CorruptCheckpointError,
    DestinationError,
    InitRuleError,
    PatternError,
    RecipeError,
    SelectionError,
    UnsafePickleError,
    UnsupportedFormatError,
    VerificationError,
    WriteError,
)
from .version import __version__

# The public names load their module on first use (PEP 562): a command imports only what it
# needs (`reinit` never loads diff or inspect), which keeps start-up short.
_LAZY = {
    "DiffResult": "tools.compare",
    "diff": "tools.compare",
    "Result": "api",
    "add_tokens": "api",
    "apply": "api",
    "cast": "api",
    "config": "api",
    "convert": "api",
    "average": "api",
    "merge_lora": "api",
    "drop": "api",
    "layers": "api",
    "reinit": "api",
    "rename": "api",
    "resize_vocab": "api",
    "Checkpoint": "formats.checkpoint",
    "TensorInfo": "formats.checkpoint",
    "open_checkpoint": "formats.checkpoint",
    "Inspection": "tools.inspection",
    "inspect": "tools.inspection",
    "Plan": "plan",
    "Recipe": "recipe",
    "parse_size": "sizes",
    "Verification": "tools.verify",
    "verify": "tools.verify",
    "CheckResult": "tools.check",
    "check": "tools.check",
    "write_plot": "tools.plot",
}

if _typing.TYPE_CHECKING:  # pragma: no cover
    from typing import Any

    from .api import (
        Result,
        add_tokens,
        apply,
        average,
        cast,
        config,
        convert,
        drop,
        layers,
        merge_lora,
        reinit,
        rename,
        resize_vocab,
    )
    from .formats.checkpoint import Checkpoint, TensorInfo, open_checkpoint
    from .plan import Plan
    from .recipe import Recipe
    from .sizes import parse_size
    from .tools.check import CheckResult, check
    from .tools.compare import DiffResult, diff
    from .tools.inspection import Inspection, inspect
    from .tools.plot import write_plot
    from .tools.verify import Verification, verify


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ckptsurgeon' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public API (``__all__``), not the helpers this module imports."""
    return sorted(__all__)


__all__ = [
    "CheckResult",
    "Checkpoint",
    "CheckpointNotFoundError",
    "CkptSurgeonError",
    "CorruptCheckpointError",
    "DestinationError",
    "DiffResult",
    "InitRuleError",
    "Inspection",
    "PatternError",
    "Plan",
    "Recipe",
    "RecipeError",
    "Result",
    "SelectionError",
    "TensorInfo",
    "UnsafePickleError",
    "UnsupportedFormatError",
    "Verification",
    "VerificationError",
    "WriteError",
    "__version__",
    "add_tokens",
    "apply",
    "average",
    "cast",
    "check",
    "config",
    "convert",
    "diff",
    "drop",
    "inspect",
    "layers",
    "merge_lora",
    "open_checkpoint",
    "parse_size",
    "reinit",
    "rename",
    "resize_vocab",
    "verify",
    "write_plot",
]
