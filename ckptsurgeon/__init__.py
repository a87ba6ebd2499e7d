"""ckptsurgeon: offline surgery on transformer checkpoints.

Read any common checkpoint layout, select tensors by pattern, drop or re-initialise them with
BERT's rules, and write a byte-deterministic safetensors checkpoint that stock
``from_pretrained`` loads.

>>> import ckptsurgeon
>>> ckptsurgeon.reinit("bert/", "bert-top3/", top_layers=3, pooler=True)  # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0"

from .checkpoint import Checkpoint, TensorInfo, open_checkpoint
from .diff import DiffResult, diff
from .errors import (
    CheckpointNotFoundError,
    CkptSurgeonError,
    CorruptCheckpointError,
    DestinationError,
    InitRuleError,
    PatternError,
    SelectionError,
    UnsafePickleError,
    UnsupportedFormatError,
    VerificationError,
    WriteError,
)
from .inspection import Inspection, inspect
from .sizes import parse_size
from .surgery import Plan, Result, convert, drop, reinit

__all__ = [
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
    "Result",
    "SelectionError",
    "TensorInfo",
    "UnsafePickleError",
    "UnsupportedFormatError",
    "VerificationError",
    "WriteError",
    "__version__",
    "convert",
    "diff",
    "drop",
    "inspect",
    "open_checkpoint",
    "parse_size",
    "reinit",
]
