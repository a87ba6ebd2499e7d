"""``config``: set config.json keys (``--config-set KEY=JSON`` on every writing command).

After ``drop -p 'cls.*'`` config.json still names ``BertForMaskedLM``, so from_pretrained (and
``verify``) builds a head the weights no longer have: ``--config-set
'architectures=["BertModel"]'`` says what the output now is. A dotted key reaches into a
sub-config (``text_config.vocab_size``). The tensors are copied unchanged; the plan lists each
edit like the edits other operations make.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import RecipeError, SelectionError, echo
from ..plan import Plan
from .base import Operation, Option

_KEY_RE = re.compile(r"^[^.\s=]+(\.[^.\s=]+)*$")


def plan_config(plan: Plan, set: dict[str, Any]) -> Plan:
    if not set:
        raise SelectionError("nothing to set", plan.source, "give KEY=JSON, e.g. set: {x: 1}")
    if plan.config is None:
        raise SelectionError(
            "SRC has no config.json to edit", plan.source, "add a config.json to SRC first"
        )
    for key in set:
        if not _KEY_RE.match(key):
            raise RecipeError(
                f"{echo(key)} is not a config.json key", plan.source, "write KEY or SECTION.KEY"
            )
        node: Any = plan.config
        for part in key.split(".")[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
            if node is not None and not isinstance(node, dict):
                raise RecipeError(
                    f"config.json's {part!r} is not an object, so {key!r} cannot be set",
                    plan.source,
                    "set the whole value instead",
                )
            if node is None:
                break
    return plan.with_config(dict(set))


CONFIG = Operation(
    "config",
    "Set config.json keys (tensors unchanged); write DEST.",
    (
        Option(
            "set",
            ("--set",),
            "mapping",
            "Set config.json KEY to the JSON value (dotted KEY: a sub-config's key); repeatable.",
            metavar="KEY=JSON",
            required=True,
        ),
    ),
    plan_config,
)
