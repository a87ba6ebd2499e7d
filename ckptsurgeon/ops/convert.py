"""``convert``: every tensor unchanged; the output is safetensors (the identity operation)."""

from __future__ import annotations

from ..formats.checkpoint import wrapper_hint
from ..plan import Plan
from .base import Operation


def plan_convert(plan: Plan) -> Plan:
    hint = wrapper_hint(plan.names)
    if hint:
        plan = plan.warn(
            f"{hint} (transformers does not strip it, so from_pretrained would load none of "
            "these tensors)"
        )
    return plan


CONVERT = Operation(
    "convert",
    "Rewrite SRC as safetensors at DEST with every value unchanged.",
    (),
    plan_convert,
    details=(
        "DEST ending in .safetensors is written as that single file; otherwise DEST is a model "
        "directory (sharded past --max-shard-size) with SRC's other files copied beside the "
        "weights."
    ),
    strip_prefix=True,
)
