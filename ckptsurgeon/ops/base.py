"""What every operation is: a name, its options (defined once) and a pure plan -> plan function.

An :class:`Option` is the single definition of one setting: the CLI builds its flag from it, a
recipe step's key is its ``key`` and is checked against its ``kind``, and the Python API passes
keyword arguments through the same check. So ``--top-layers 3``, ``top_layers: 3`` and
``top_layers=3`` mean the same thing and are validated the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import RecipeError, echo
from ..patterns import as_patterns
from ..plan import Plan
from .values import parse_assignments, parse_layer_list

# kinds: "patterns"/"strings" (a list of strings; a bare string is one), "pairs" (a list of
# [A, B] string pairs), "mapping" (KEY: value; KEY=JSON strings on the CLI), "int", "float",
# "bool", "choice"


@dataclass(frozen=True)
class Option:
    key: str  # recipe key and API keyword
    flags: tuple[str, ...]  # CLI flags, e.g. ("-p", "--pattern")
    kind: str
    help: str
    default: Any = None
    choices: tuple[str, ...] = ()
    metavar: str | None = None
    minimum: float | None = None  # for int/float: the smallest allowed value
    min_open: bool = False  # minimum itself excluded
    maximum: float | None = None
    required: bool = False
    # left out of the step when unset, so that runs from before the option existed are recorded
    # (and write bytes) as they were
    omit_unset: bool = False

    @property
    def multiple(self) -> bool:
        return self.kind in ("patterns", "strings", "pairs", "mapping")

    def check(self, value: Any, where: str, label: str = "") -> Any:
        """The value normalised (lists as lists), or :class:`RecipeError` naming ``where`` (the
        recipe step or the command) and ``label`` (the key, or the CLI flag)."""
        label = label or self.key

        def bad(expected: str) -> RecipeError:
            return RecipeError(
                f"{label} must be {expected}, got {echo(value)}", where, "fix the value"
            )

        if value is None:
            if self.required:
                raise RecipeError(f"{label} is required", where, "give a value")
            if self.kind == "mapping":
                return {}
            return [] if self.multiple else self.default
        if self.kind == "str":
            if not isinstance(value, str):
                raise bad("a string")
            return value
        if self.kind == "layers":  # "0,2,4-6" or [0, 2, "4-6"]: checked, kept as a list
            ok = isinstance(value, str) or (
                isinstance(value, list) and all(isinstance(v, int | str) for v in value)
            )
            if not ok:
                raise bad("a list of layer indices and ranges like 0,2,4-6")
            try:
                return parse_layer_list(value, label)
            except RecipeError as exc:
                raise RecipeError(exc.what, where, exc.hint) from None
        if self.kind in ("patterns", "strings"):
            if isinstance(value, str):
                return [value]
            if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
                return list(as_patterns(value))
            raise bad("a string or a list of strings")
        if self.kind == "pairs":
            ok = isinstance(value, Sequence) and not isinstance(value, str)
            pairs = list(value) if ok else []
            if not ok or not all(
                isinstance(p, Sequence)
                and not isinstance(p, str)
                and len(p) == 2
                and all(isinstance(x, str) for x in p)
                for p in pairs
            ):
                raise bad("a list of [PATTERN, REPLACEMENT] pairs of strings")
            return [[p[0], p[1]] for p in pairs]
        if self.kind == "mapping":  # {KEY: any JSON value}; the CLI gives KEY=JSON strings
            if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
                return parse_assignments(value, label)
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                raise bad("a mapping of config.json keys to values")
            return dict(value)
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise bad("true or false")
            return value
        if self.kind == "choice":
            if value not in self.choices:
                raise bad("one of " + ", ".join(self.choices))
            return value
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad("an integer")
        elif self.kind == "weights":  # [1, 2, 0.5] or "1,2,0.5": positive numbers
            if isinstance(value, str):
                try:
                    value = [float(v) for v in value.split(",")]
                except ValueError:
                    raise bad("numbers separated by commas") from None
            if not isinstance(value, list | tuple) or not value:
                raise bad("a list of numbers")
            for v in value:
                if isinstance(v, bool) or not isinstance(v, int | float):
                    raise bad("a list of numbers")
                if not math.isfinite(v) or v <= 0:
                    raise bad("positive finite numbers")
            return [float(v) for v in value]
        elif self.kind == "float":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise bad("a number")
            value = float(value)
            if not math.isfinite(value):
                raise bad("a finite number")
        if self.minimum is not None and (
            value < self.minimum or (self.min_open and value == self.minimum)
        ):
            op = ">" if self.min_open else ">="
            raise bad(f"{op} {self.minimum:g}")
        if self.maximum is not None and value > self.maximum:
            raise bad(f"<= {self.maximum:g}")
        return value


PATTERNS: Option = Option(
    "patterns",
    ("-p", "--pattern"),
    "patterns",
    "Glob over full tensor names, brace expansion allowed; repeat for a union.",
    metavar="PATTERN",
)
CONFIG_SET: Option = Option(
    "config_set",
    ("--config-set",),
    "mapping",
    "Also set config.json KEY to the JSON value, e.g. 'architectures=[\"BertModel\"]' "
    "(dotted KEY: a sub-config's key); repeatable.",
    metavar="KEY=JSON",
)
STRIP_PREFIX: Option = Option(
    "strip_prefix",
    ("--strip-prefix",),
    "strings",
    "Remove prefix P (e.g. 'module.' of DDP, '_orig_mod.' of torch.compile) from names; "
    "repeatable, the first that matches is removed.",
    metavar="P",
)
SEED: Option = Option(
    "seed",
    ("--seed",),
    "int",
    "Seed; each tensor's values depend only on (seed, tensor name).",
    0,
    minimum=0,
    maximum=2**63 - 1,
)
EXCLUDE: Option = Option(
    "exclude",
    ("-x", "--exclude"),
    "patterns",
    "Glob of tensors to leave out of the selection; repeatable.",
    metavar="PATTERN",
)


@dataclass(frozen=True)
class Operation:
    """One surgery: its name (CLI verb and recipe ``op``), options and plan function."""

    name: str
    summary: str  # first line of --help
    options: tuple[Option, ...]
    apply: Callable[..., Plan]  # apply(plan, **options) -> plan
    details: str = ""  # the rest of --help
    strip_prefix: bool = False  # the verb also takes --strip-prefix (reads SRC's names stripped)
    action: str | None = None  # the plan action its tensors get, for the summary ("drop"...)
    inputs: str = ""  # the CLI takes several SRCs (SRC SRC... DEST); this recipe key the rest

    def option(self, key: str) -> Option:
        return next(o for o in self.options if o.key == key)

    def normalise(
        self, values: dict[str, Any], where: str, labels: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Every option of this operation, checked, with defaults filled in (in order)."""
        known = {o.key for o in self.options}
        for key in values:
            if key not in known:
                listed = ", ".join(sorted(known)) or "none"
                raise RecipeError(
                    f"unknown key {key!r} for {self.name}",
                    where,
                    f"the keys of {self.name} are: {listed}",
                )
        labels = labels or {}
        checked = {
            o.key: o.check(values.get(o.key), where, labels.get(o.key, "")) for o in self.options
        }
        return {
            o.key: checked[o.key]
            for o in self.options
            if not (o.omit_unset and checked[o.key] is None)
        }
