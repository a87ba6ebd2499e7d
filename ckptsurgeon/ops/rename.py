"""``rename``: new names for tensors, bytes unchanged.

In one step: ``strip_prefix`` (the first prefix that matches is removed), then each ``sub``
(``re.sub(REGEX, REPL, name)``, in order), then ``add_prefix``. Folded tied aliases are renamed
with their canonical tensor, so a tied group stays one group. Two names that would become one,
an empty name and a rename that changes nothing are errors.
"""

from __future__ import annotations

import re
from dataclasses import replace

from ..errors import SelectionError
from ..formats.prefixes import normalise_name_prefixes, require_a_prefix, strip_first_prefix
from ..plan import Copy, Plan
from .base import STRIP_PREFIX, Operation, Option


def plan_rename(
    plan: Plan, sub: list[list[str]], add_prefix: str | None, strip_prefix: list[str]
) -> Plan:
    if not (sub or add_prefix or strip_prefix):
        raise SelectionError(
            "nothing to rename",
            plan.source,
            "give --sub REGEX REPL, --add-prefix or --strip-prefix",
        )
    everything = [*plan.names, *plan.aliases]
    prefixes = normalise_name_prefixes(strip_prefix, everything, plan.source)
    if prefixes:
        require_a_prefix(everything, prefixes, plan.source)
    compiled = []
    for pattern, repl in sub:
        try:
            compiled.append((re.compile(pattern), repl))
        except re.error as exc:
            raise SelectionError(
                f"--sub pattern is not a valid regular expression ({exc})",
                pattern,
                "fix the pattern (Python re syntax)",
            ) from None

    def new_name(name: str) -> str:
        name = strip_first_prefix(name, prefixes)
        for regex, repl in compiled:
            try:
                name = regex.sub(repl, name)
            except (re.error, IndexError) as exc:
                raise SelectionError(
                    f"--sub replacement {repl!r} is invalid ({exc})",
                    regex.pattern,
                    "refer only to groups the pattern has (\\1, \\g<name>)",
                ) from None
        return (add_prefix or "") + name

    mapping = {n: new_name(n) for n in everything}
    if all(old == new for old, new in mapping.items()):
        raise SelectionError(
            "the rename changes no name",
            plan.source,
            "check the patterns with `ckptsurgeon inspect`",
        )
    seen: dict[str, str] = {}
    for old, new in mapping.items():
        if not new:
            raise SelectionError(
                f"the rename makes {old!r} an empty name", old, "keep at least one character"
            )
        if new in seen:
            raise SelectionError(
                f"the rename makes {seen[new]!r} and {old!r} the same name {new!r}",
                plan.source,
                "rename them apart, or drop one of the two first",
            )
        seen[new] = old
    tensors = []
    for t in plan.tensors:
        new = mapping[t.name]
        if new == t.name:
            tensors.append(t)
            continue
        first = t.renamed_from or (t.source.tensor if isinstance(t.source, Copy) else t.name)
        tensors.append(replace(t, name=new, renamed_from=first))
    aliases = {mapping[a]: mapping[c] for a, c in plan.aliases.items()}
    return replace(plan, tensors=tuple(tensors), aliases=aliases)


RENAME = Operation(
    "rename",
    "Rename tensors of SRC (bytes unchanged); write DEST.",
    (
        Option(
            "sub",
            ("--sub",),
            "pairs",
            "Apply Python re.sub(REGEX, REPL, name) to every name; repeatable, in order.",
            metavar="REGEX REPL",
        ),
        Option("add_prefix", ("--add-prefix",), "str", "Prepend P to every name.", metavar="P"),
        STRIP_PREFIX,
    ),
    plan_rename,
    details=(
        "In this order: --strip-prefix, each --sub, --add-prefix. Tied aliases are renamed with "
        "their canonical tensor. Two names becoming one, an empty name and a rename that changes "
        "nothing are errors."
    ),
    action="rename",
)
