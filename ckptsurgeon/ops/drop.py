"""``drop``: leave tensors out, so that ``from_pretrained`` initialises them itself."""

from __future__ import annotations

import re
from dataclasses import replace

from ..errors import SelectionError
from ..plan import Plan
from ..ties import name_ties
from .base import EXCLUDE, PATTERNS, Operation
from .select import select_names


def plan_drop(plan: Plan, patterns: list[str], exclude: list[str]) -> Plan:
    if not patterns:
        raise SelectionError("nothing selected", plan.source, "give at least one -p PATTERN")
    selected = set(select_names(plan, patterns, exclude))
    warnings = []
    for alias in sorted(selected & set(plan.aliases)):
        warnings.append(
            f"{alias} is a tied alias of {plan.aliases[alias]} and is not stored separately; "
            "nothing to drop for it"
        )
    present = set(plan.names)
    for alias, canonical in name_ties(plan.names, plan.config).items():
        if canonical in selected and alias not in selected and alias in present:
            raise SelectionError(
                f"dropping {canonical} while its tied alias {alias} stays would leave the "
                "alias without its canonical tensor (transformers 4 then leaves it "
                "uninitialised)",
                canonical,
                f"drop both (add -p '{alias}') or neither",
            )
    kept = tuple(t for t in plan.tensors if t.name not in selected)
    dropped = tuple(t for t in plan.tensors if t.name in selected)
    if not kept:
        raise SelectionError(
            f"the selection drops all {len(plan.tensors)} tensors; the output would hold none",
            plan.source,
            "narrow -p, or add -x for what to keep",
        )
    return replace(plan, tensors=kept, dropped=(*plan.dropped, *dropped)).warn(*warnings)


_HEAD_CLASS_RE = re.compile(r"(For[A-Z]\w*|LMHeadModel|WithLMHead\w*)$")


def dropped_head_hint(plan: Plan) -> str | None:
    """When the plan drops a whole top-level module (``cls.*``) and config.json's
    ``architectures`` still names a class with a head, the command that says what the output
    now is: ``--config-set 'architectures=["BertModel"]'``."""
    names = (plan.config or {}).get("architectures")
    if not plan.dropped or not isinstance(names, list) or not names:
        return None
    arch = names[0]
    if not isinstance(arch, str) or not _HEAD_CLASS_RE.search(arch):
        return None
    kept = {t.name.split(".", 1)[0] for t in plan.tensors}
    gone = sorted({t.name.split(".", 1)[0] for t in plan.dropped} - kept)
    if not gone:
        return None
    base = _HEAD_CLASS_RE.sub("Model", arch)
    return (
        f"the dropped {', '.join(g + '.*' for g in gone)} held the head of {arch}, which "
        "config.json's architectures still names: from_pretrained and verify would build that "
        f"head anew; to ship the base model add --config-set 'architectures=[\"{base}\"]' "
        f"(a recipe: {{op: config, set: {{architectures: [{base}]}}}})"
    )


DROP = Operation(
    "drop",
    "Write SRC without the selected tensors, so from_pretrained initialises them itself.",
    (PATTERNS, EXCLUDE),
    plan_drop,
    strip_prefix=True,
    action="drop",
)
