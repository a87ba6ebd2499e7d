"""ckptsurgeon: offline surgery on transformer checkpoints.

Read any common checkpoint layout, select tensors by pattern, drop or re-initialise them with
BERT's rules, and write a byte-deterministic safetensors checkpoint that stock
``from_pretrained`` loads.

>>> import ckptsurgeon
>>> ckptsurgeon.reinit("bert/", "bert-top3/", top_layers=3, pooler=True)  # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0"

from .api import (
    Result,
    apply,
    cast,
    convert,
    drop,
    layers,
    reinit,
    rename,
    resize_vocab,
)
from .checkpoint import Checkpoint, TensorInfo, open_checkpoint
from .diff import DiffResult, diff
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
from .inspection import Inspection, inspect
from .plan import Plan
from .recipe import Recipe
from .sizes import parse_size

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
    "Recipe",
    "RecipeError",
    "Result",
    "SelectionError",
    "TensorInfo",
    "UnsafePickleError",
    "UnsupportedFormatError",
    "VerificationError",
    "WriteError",
    "__version__",
    "apply",
    "cast",
    "convert",
    "diff",
    "drop",
    "inspect",
    "layers",
    "open_checkpoint",
    "parse_size",
    "reinit",
    "rename",
    "resize_vocab",
]
