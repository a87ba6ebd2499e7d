"""``cast``: floating tensors to bf16, fp16 or fp32, bit for bit as torch's ``.to()``.

Integer, bool and 8-bit float tensors are never cast (reported as skipped). config.json's
``dtype`` (and ``torch_dtype``, where present) is set as save_pretrained writes it, so that
transformers 5.x loads the model in the cast dtype by default; when only some tensors are cast
it is left alone, with a warning.
"""

from __future__ import annotations

from dataclasses import replace

from ..dtypes import CAST_TARGETS, CASTABLE, DTYPES, TORCH_DTYPE_NAMES
from ..errors import SelectionError
from ..plan import Plan, PlannedTensor, Skipped
from .base import EXCLUDE, PATTERNS, Operation, Option
from .select import select_names


def plan_cast(plan: Plan, dtype: str, patterns: list[str], exclude: list[str]) -> Plan:
    target = CAST_TARGETS[dtype]
    if patterns:
        chosen = set(select_names(plan, patterns, exclude))
    else:
        chosen = set(select_names(plan, ["*"], exclude)) if exclude else set(plan.names)
    skipped: list[Skipped] = []
    out: list[PlannedTensor] = []
    for t in plan.tensors:
        if t.name not in chosen or t.dtype == target:
            out.append(t)
        elif t.dtype not in CASTABLE:
            kind = DTYPES[t.dtype].kind
            what = "integer" if kind in ("int", "uint") else kind
            skipped.append(Skipped(t.name, f"{t.dtype} ({what}) tensor, never cast"))
            out.append(t)
        else:
            out.append(replace(t, casts=(*t.casts, target)))
    floating = [t for t in out if t.dtype in CASTABLE]
    if not any(t.casts and t.casts[-1] == target for t in out if t.name in chosen):
        if all(t.dtype == target for t in floating if t.name in chosen) and floating:
            raise SelectionError(
                f"every selected floating tensor is already {target}; nothing to cast",
                plan.source,
                "choose another --dtype, or select other tensors",
            )
        raise SelectionError(
            "nothing to cast: no selected tensor is a floating tensor",
            plan.source,
            "select F16, BF16, F32 or F64 tensors",
        )
    plan = replace(plan, tensors=tuple(out), skipped=(*plan.skipped, *skipped))
    name = TORCH_DTYPE_NAMES[target]
    if plan.config is None:
        return plan
    if all(t.dtype == target for t in floating):
        edits = {"dtype": name}
        if "torch_dtype" in plan.config:
            edits["torch_dtype"] = name
        return plan.with_config(edits)
    current = plan.config.get("dtype", plan.config.get("torch_dtype"))
    return plan.warn(
        f"config.json's dtype is left as {current!r}: only some floating tensors are {target} "
        "(from_pretrained converts every tensor to the config's dtype)"
    )


CAST = Operation(
    "cast",
    "Cast floating tensors of SRC to bf16, fp16 or fp32, bit for bit as torch's .to(); write DEST.",
    (
        Option(
            "dtype",
            ("--dtype",),
            "choice",
            "The dtype to cast to.",
            choices=tuple(CAST_TARGETS),
            required=True,
        ),
        PATTERNS,
        EXCLUDE,
    ),
    plan_cast,
    details=(
        "Default: every floating tensor; -p/-x narrow it. Integer and bool tensors are never "
        "cast. Values are bit-identical to torch's tensor.to(dtype) (round to nearest even, NaN "
        "and Inf kept); config.json's dtype is set when every floating tensor ends up cast."
    ),
    action="cast",
)
