"""The operations: each a module with one :class:`~.base.Operation` (name, options, plan -> plan).

A recipe step ``{op: NAME, ...}`` runs ``OPERATIONS[NAME]``; the CLI verb of the same name is
built from the same definition.
"""

from __future__ import annotations

from .add_tokens import ADD_TOKENS
from .average import AVERAGE
from .base import Operation, Option
from .cast import CAST
from .config import CONFIG
from .convert import CONVERT
from .drop import DROP
from .layers import LAYERS
from .merge_lora import MERGE_LORA
from .reinit import REINIT
from .rename import RENAME
from .vocab import RESIZE_VOCAB

OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in (
        CONVERT,
        DROP,
        REINIT,
        CAST,
        RENAME,
        LAYERS,
        RESIZE_VOCAB,
        ADD_TOKENS,
        CONFIG,
        AVERAGE,
        MERGE_LORA,
    )
}

__all__ = ["OPERATIONS", "Operation", "Option"]
