"""``convert``: every tensor unchanged; the output is safetensors (the identity operation)."""

from __future__ import annotations

from ..dtypes import CAST_TARGETS, CASTABLE
from ..formats.prefixes import wrapper_hint
from ..plan import Plan
from .base import Operation, Option
from .cast import plan_cast


def plan_convert(plan: Plan, dtype: str | None = None) -> Plan:
    if dtype is not None:  # cast on the way (a training checkpoint to a bf16 release)
        target = CAST_TARGETS[dtype]
        if any(t.dtype in CASTABLE and t.dtype != target for t in plan.tensors):
            plan = plan_cast(plan, dtype, [], [])
    hint = wrapper_hint(plan.names)
    if hint:
        plan = plan.warn(
            f"{hint} (transformers does not strip it, so from_pretrained would load none of "
            "these tensors)"
        )
    return plan


CONVERT = Operation(
    "convert",
    "Rewrite SRC as safetensors at DEST with every value unchanged (or cast with --dtype).",
    (
        Option(
            "dtype",
            ("--dtype",),
            "choice",
            "Cast floating tensors on the way, as cast does.",
            choices=tuple(CAST_TARGETS),
            omit_unset=True,
        ),
    ),
    plan_convert,
    details=(
        "DEST ending in .safetensors is written as that single file; otherwise DEST is a model "
        "directory (sharded past --max-shard-size) with SRC's other files copied beside the "
        "weights."
    ),
    strip_prefix=True,
)
