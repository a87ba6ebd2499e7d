"""``reinit``: fresh values for the selected tensors, by BERT's rules (:mod:`..init_rules`).

Values depend only on (seed, the tensor's name at this step): the same tensor gets the same
values whatever else is selected. A tied pair stays tied: the alias gets its canonical tensor's
values.
"""

from __future__ import annotations

import math
from dataclasses import replace

from ..dtypes import DTYPES
from ..errors import SelectionError
from ..plan import Generate, ModelDraw, Plan, PlannedTensor, Skipped
from ..rules.bert import Skip, rule_for, std_from
from ..rules.model import ModelInit, choose_rules
from ..ties import name_ties
from .base import EXCLUDE, PATTERNS, SEED, Operation, Option
from .select import select_names


def plan_reinit(
    plan: Plan,
    patterns: list[str],
    top_layers: int | None,
    pooler: bool,
    exclude: list[str],
    seed: int,
    std: float | None,
    stack: str | None = None,
    rules: str = "auto",
) -> Plan:
    if seed < 0 or seed >= 2**63:
        raise SelectionError(f"seed {seed} is out of range", "--seed", "give 0 <= seed < 2**63")
    if std is not None and not std > 0:
        raise SelectionError(f"std {std} is not positive", "--std", "give a positive std")
    if std is not None and not math.isfinite(std):
        raise SelectionError(f"std {std} is not finite", "--std", "give a finite positive std")
    selected = select_names(
        plan, patterns, exclude, top_layers=top_layers, pooler=pooler, stack=stack
    )
    the_std = std_from(plan.config, std)
    kind = choose_rules(rules, plan.config)
    if kind == "model" and std is not None:
        raise SelectionError(
            "--std sets BERT's rules; the model's own rules choose their std",
            "--std",
            "drop --std, or pass --rules bert",
        )
    engine = ModelInit.build(plan.config, plan.source) if kind == "model" else None
    warnings: list[str] = []
    chosen = set(selected)
    # Selecting only a folded alias re-initialises its canonical tensor.
    for alias in [n for n in selected if n in plan.aliases]:
        canonical = plan.aliases[alias]
        chosen.discard(alias)
        if canonical not in chosen:
            warnings.append(
                f"{alias} is tied to {canonical}; re-initialising {canonical} (and so both)"
            )
            chosen.add(canonical)
    # Tied pairs stored separately: the alias follows its canonical tensor, value for value.
    values_from: dict[str, str] = {}
    for alias, canonical in name_ties(plan.names, plan.config).items():
        if alias in chosen and canonical not in chosen:
            warnings.append(f"{alias} is tied to {canonical}; re-initialising {canonical} too")
            chosen.add(canonical)
        if canonical in chosen:
            chosen.add(alias)
            values_from[alias] = canonical
    by_name = {t.name: t for t in plan.tensors}
    skipped: list[Skipped] = []
    out: list[PlannedTensor] = []
    for t in plan.tensors:
        if t.name not in chosen:
            out.append(t)
            continue
        source = by_name.get(values_from.get(t.name, t.name), t)
        if source.shape != t.shape:
            source = t
        if engine is not None:
            if DTYPES[t.dtype].kind != "float":
                skipped.append(Skipped(t.name, f"{t.dtype} tensor, never re-initialised"))
                out.append(t)
                continue
            versions = tuple(sorted(engine.versions.items()))
            spec = engine.spec(source.name, t.shape, seed)
            if spec is not None:  # streamed by the tool's own generators, chunk by chunk
                made: Generate | ModelDraw = Generate(spec, source.name, seed, versions)
            else:  # a rule the calls do not name: torch draws it, whole
                made = ModelDraw(source.name, seed, "model init (drawn by torch)", versions)
            out.append(PlannedTensor(t.name, t.dtype, t.shape, made))
            continue
        try:
            rule = rule_for(source.name, t.dtype, t.shape, plan.config, the_std)
        except Skip as why:
            skipped.append(Skipped(t.name, str(why)))
            out.append(t)
            continue
        out.append(PlannedTensor(t.name, t.dtype, t.shape, Generate(rule, source.name, seed)))
    if not any(isinstance(t.source, Generate | ModelDraw) and t.name in chosen for t in out):
        reasons = "; ".join(f"{s.name}: {s.reason}" for s in skipped[-3:])
        raise SelectionError(
            "nothing to re-initialise: every selected tensor is skipped"
            + (f" ({reasons})" if reasons else ""),
            plan.source,
            "select floating-point weights, biases or LayerNorm parameters",
        )
    return replace(plan, tensors=tuple(out), skipped=(*plan.skipped, *skipped)).warn(*warnings)


REINIT = Operation(
    "reinit",
    "Re-initialise selected tensors of SRC by the model's own rules (or BERT's); write DEST.",
    (
        PATTERNS,
        Option(
            "top_layers",
            ("--top-layers",),
            "int",
            "Select the N highest-numbered encoder layers.",
            metavar="N",
            minimum=1,
        ),
        Option("pooler", ("--pooler",), "bool", "Select the pooler (*pooler.dense.*).", False),
        EXCLUDE,
        SEED,
        Option(
            "std",
            ("--std",),
            "float",
            "Std of normal draws [default: config initializer_range, else 0.02].",
            minimum=0,
            min_open=True,
        ),
        Option(
            "stack",
            ("--stack",),
            "str",
            "The layer stack --top-layers counts in, when there are several (decoder.block).",
            metavar="PREFIX",
        ),
        Option(
            "rules",
            ("--rules",),
            "choice",
            "bert: BERT's rules, torch-free; model: the architecture's own init (transformers); "
            "auto: bert for the BERT family, model otherwise.",
            "auto",
            choices=("auto", "bert", "model"),
        ),
    ),
    plan_reinit,
    details=(
        "--rules auto (default) takes BERT's rules for the BERT family and the model's own init "
        "(its _init_weights, run by transformers) for every other architecture. BERT's rules: "
        "LayerNorm weight 1, bias 0; every other bias 0; embeddings N(0, std) with the padding "
        "row zeroed; every other floating weight of rank >= 2 N(0, std). Integer buffers are "
        "skipped. --dry-run names each tensor's rule. Unselected tensors are copied bit for bit."
    ),
    strip_prefix=True,
    action="reinit",
)
