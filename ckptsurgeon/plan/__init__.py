"""The plan: for every output tensor, where its bytes come from; and the config.json edits.

A :class:`Plan` is pure data, printable (``--dry-run``) and built from headers alone. Each
output tensor has a name, a shape and a *source*: a :class:`Copy` of a source tensor (under any
name) or :class:`Generate`-d values (a rule, the name that seeds its stream, a seed), followed
by zero or more casts (``casts``: each dtype in turn). Operations (``ckptsurgeon.ops``) are pure
functions from plan to plan; one executor (:mod:`ckptsurgeon.run.execute`) streams any plan.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any

from ..dtypes import nbytes_of
from ..formats.checkpoint import Checkpoint
from ..formats.sidefiles import SideFiles
from ..record import encode
from ..rules.bert import Rule

# What happens to a tensor (PlannedTensor.action, and "drop"), in the past tense for summaries
PAST_TENSE = {
    "drop": "dropped",
    "reinit": "re-initialised",
    "resize": "resized",
    "cast": "cast",
    "rename": "renamed",
    "average": "averaged",
    "merge": "merged",
}


@dataclass(frozen=True)
class Copy:
    """The bytes of a source tensor (its name in the opened checkpoint; ``input``: which one,
    0 being SRC and ``i`` being ``Plan.inputs[i - 1]``)."""

    tensor: str
    input: int = 0


@dataclass(frozen=True)
class Generate:
    """Values drawn by ``rule`` from the stream of (``seed``, ``stream``)."""

    rule: Rule
    stream: str
    seed: int
    versions: tuple[tuple[str, str], ...] = ()  # --rules model: the libraries read for the rule


@dataclass(frozen=True)
class ModelDraw:
    """Values from the architecture's own init (``--rules model``), seeded by (``seed``,
    ``stream``); ``rule`` says what it draws, ``versions`` the libraries that drew it."""

    stream: str
    seed: int
    rule: str
    versions: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Rows:
    """The first ``keep`` rows of a source tensor, then ``new`` rows: each the ``mean`` of the
    source's rows, ``zeros``, or drawn by ``rule`` from the stream of (``seed``, ``stream``)."""

    tensor: str
    keep: int
    new: int
    fill: str  # "mean", "zeros" or "normal"
    rule: Rule | None = None
    stream: str = ""
    seed: int = 0
    # fill "pieces": new row i is the mean of the source rows pieces[i] (add-tokens: the ids
    # the old tokenizer split the token into); rows past them get the mean of all rows
    pieces: tuple[tuple[int, ...], ...] = ()

    def describe(self) -> str:
        text = f"rows 0-{self.keep - 1} of {self.tensor}"
        if self.new:
            what = self.rule.describe() if self.rule is not None else self.fill
            if self.fill == "pieces":
                what = f"mean of each token's pieces' rows, {self.new - len(self.pieces)} mean"
            text += f" + {self.new} new rows ({what})"
        return text


@dataclass(frozen=True)
class Combine:
    """Bytes computed from several opened checkpoints: ``inputs`` are (input index, tensor name)
    pairs, 0 being SRC and ``i`` being ``Plan.inputs[i - 1]``. ``mean``: ``sum(w_i * x_i) /
    sum(w_i)`` accumulated in float64 in input order, rounded once; ``equal``: every input
    must hold the same bytes, which are copied (integer and bool tensors)."""

    kind: str  # "mean" or "equal"
    inputs: tuple[tuple[int, str], ...]
    weights: tuple[float, ...] = ()

    @property
    def tensor(self) -> str:
        """The name in SRC (the first input)."""
        return self.inputs[0][1]

    def describe(self) -> str:
        n = len(self.inputs)
        if self.kind == "equal":
            return f"equal in {n} inputs, copied"
        if len(set(self.weights)) > 1:
            return f"weighted mean of {n} ({', '.join(f'{w:g}' for w in self.weights)})"
        return f"mean of {n}"


@dataclass(frozen=True)
class LoraMerge:
    """A base tensor (SRC's ``tensor``) plus a LoRA delta from another input, as PEFT's
    ``merge_and_unload`` computes it in float32: ``kind`` ``linear`` ``W + (B @ A) * s``,
    ``conv1d`` (``fan_in_fan_out``) and ``embedding`` ``W + (B @ A).T * s``; with
    ``magnitude`` (DoRA) the rows re-normalised; rounded once to the tensor's dtype."""

    tensor: str
    a: tuple[int, str]
    b: tuple[int, str]
    scaling: float
    kind: str  # "linear", "conv1d" or "embedding"
    r: int
    magnitude: tuple[int, str] | None = None

    def describe(self) -> str:
        what = "dora" if self.magnitude is not None else "lora"
        return f"copy of {self.tensor} + {what}(r={self.r}, s={self.scaling:g})"


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor. ``native`` is the dtype its source yields; ``casts`` the dtypes it is
    then converted to, in order (the last is the output dtype)."""

    name: str
    native: str
    shape: tuple[int, ...]
    source: Copy | Generate | Rows | ModelDraw | Combine | LoraMerge
    casts: tuple[str, ...] = ()
    renamed_from: str | None = None  # the source name, when an operation renamed it

    @property
    def dtype(self) -> str:
        return self.casts[-1] if self.casts else self.native

    @property
    def rule(self) -> str | None:
        """The re-initialisation rule, for generated values."""
        if isinstance(self.source, ModelDraw):
            return self.source.rule
        return self.source.rule.describe() if isinstance(self.source, Generate) else None

    @property
    def nbytes(self) -> int:
        return nbytes_of(self.dtype, self.shape)

    @property
    def computed(self) -> bool:
        """Its bytes are produced (drawn, cast, resized), not copied from the source as they are."""
        return not isinstance(self.source, Copy) or bool(self.casts) or self.source.input != 0

    @property
    def action(self) -> str:
        """What happens to it: ``reinit``, ``resize``, ``cast``, ``rename`` or ``keep``."""
        if isinstance(self.source, Generate | ModelDraw):
            return "reinit"
        if isinstance(self.source, Rows):
            return "resize"
        if isinstance(self.source, Combine) and self.source.kind == "mean":
            return "average"
        if isinstance(self.source, LoraMerge) or (
            isinstance(self.source, Copy) and self.source.input != 0
        ):
            return "merge"
        if self.casts:
            return "cast"
        return "rename" if self.renamed_from is not None else "keep"

    def describe(self) -> str:
        """``copy``, ``copy of NAME``, ``normal(0, 0.02)``, ``..., cast F32 -> BF16``."""
        if isinstance(self.source, Generate):
            text = self.source.rule.describe()
        elif isinstance(self.source, ModelDraw):
            text = self.source.rule
        elif isinstance(self.source, Rows | Combine | LoraMerge):
            text = self.source.describe()
        elif self.source.input != 0:
            text = f"copy of input {self.source.input}'s {self.source.tensor}"
        elif self.source.tensor != self.name:
            text = f"copy of {self.source.tensor}"
        else:
            text = "copy"
        chain = [self.native, *self.casts]
        if self.casts:
            text += ", cast " + " -> ".join(chain)
        return text

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "action": self.action,
            "rule": self.rule,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "source": self.describe(),
        }
        if self.renamed_from is not None:
            out["renamed_from"] = self.renamed_from
        if self.casts:
            out["from_dtype"] = self.native
        return out


@dataclass(frozen=True)
class Skipped:
    name: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "reason": self.reason}


@dataclass(frozen=True)
class ConfigEdit:
    """``config.json[key]`` goes from ``old`` to ``new`` (``old`` None: the key is added)."""

    key: str
    old: Any
    new: Any

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "old": self.old, "new": self.new}


@dataclass(frozen=True)
class Plan:
    """Everything a run will write, before anything is read or written."""

    source: str
    tensors: tuple[PlannedTensor, ...]
    config: dict[str, Any] | None  # as it will be written (after config_edits)
    aliases: dict[str, str] = field(default_factory=dict)  # folded tied alias -> canonical
    dropped: tuple[PlannedTensor, ...] = ()
    skipped: tuple[Skipped, ...] = ()
    config_edits: tuple[ConfigEdit, ...] = ()
    warnings: tuple[str, ...] = ()
    steps: tuple[dict[str, Any], ...] = ()  # the normalised recipe that made this plan
    destination: str = ""
    verb: str = ""  # the command that made this plan (``apply`` for a recipe)
    input_strip: tuple[str, ...] = ()  # prefixes stripped from SRC's names as it was read
    # the other checkpoints the plan reads (``average``, ``merge_lora``): as given, and a
    # description of each (size and modification time of its files) for the record
    inputs: tuple[str, ...] = ()
    input_records: tuple[dict[str, Any], ...] = ()
    # files the plan writes beside the weights, replacing SRC's (add-tokens: the tokenizer)
    files: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)
    # the folder whose config.json and tokenizer files are SRC's (--config-from's, if given)
    side_dir: str = ""
    side_files: SideFiles | None = field(default=None, repr=False, compare=False)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tensors]

    @property
    def operation(self) -> str:
        """The command: the verb for a one-step plan, else ``apply``."""
        if self.verb:
            return self.verb
        return str(self.steps[0]["op"]) if len(self.steps) == 1 else "apply"

    @property
    def seed(self) -> int | None:
        """The seed of the last re-initialisation step, if any."""
        seeds = [s["seed"] for s in self.steps if s["op"] == "reinit"]
        return int(seeds[-1]) if seeds else None

    @property
    def std(self) -> float | None:
        """The std the last re-initialisation step used (config's, or given), if any."""
        drawn = [
            t.source.rule.std
            for t in self.tensors
            if isinstance(t.source, Generate) and t.source.rule.kind == "normal"
        ]
        if drawn:
            return drawn[-1]
        stds = [s["std"] for s in self.steps if s["op"] == "reinit"]
        return stds[-1] if stds and stds[-1] is not None else None

    def count(self, action: str) -> int:
        if action == "drop":
            return len(self.dropped)
        return sum(1 for t in self.tensors if t.action == action)

    def changed(self) -> list[PlannedTensor]:
        """Tensors whose name or bytes change, then the dropped ones."""
        return [t for t in self.tensors if t.action != "keep"] + list(self.dropped)

    def with_config(self, edits: dict[str, Any]) -> Plan:
        """This plan with config.json keys set (recorded as edits; key order kept). A dotted
        key sets a sub-config's key (``text_config.num_hidden_layers``)."""
        config = copy.deepcopy(self.config) if self.config is not None else {}
        recorded = list(self.config_edits)
        for key, value in edits.items():
            *parents, leaf = key.split(".")
            target = config
            for part in parents:
                target = target.setdefault(part, {})
            recorded.append(ConfigEdit(key, target.get(leaf), value))
            target[leaf] = value
        return replace(self, config=config, config_edits=tuple(recorded))

    def warn(self, *messages: str) -> Plan:
        return replace(self, warnings=(*self.warnings, *messages))

    def step_record(self) -> dict[str, Any]:
        """The recipe as recorded in the output metadata: a verb's options as ``arguments``
        (with its ``strip_prefix``), a recipe's normalised ``steps``."""
        if self.operation == "apply":
            return {"operation": "apply", "steps": [dict(s) for s in self.steps]}
        arguments = {k: v for k, v in self.steps[0].items() if k != "op"}
        if self.input_strip:
            arguments["strip_prefix"] = list(self.input_strip)
        for step in self.steps[1:]:  # a verb's --config-set
            if step["op"] == "config":
                arguments["config_set"] = {**arguments.get("config_set", {}), **step["set"]}
        return {"operation": self.operation, "arguments": arguments}

    def metadata(self) -> dict[str, str]:
        """The ``__metadata__`` entries recording this run (:mod:`ckptsurgeon.record`)."""
        record = self.step_record()
        if self.aliases:
            record["tied_aliases_dropped"] = dict(sorted(self.aliases.items()))
        if self.inputs:  # what the release was made from, besides SRC
            record["inputs"] = [dict(r) for r in self.input_records]
        drawn = [
            t.source
            for t in self.tensors
            if isinstance(t.source, ModelDraw | Generate) and t.source.versions
        ]
        if drawn:  # --rules model: the values depend on these versions too
            record["model_rules_versions"] = dict(drawn[0].versions)
        return encode(record)

    def to_json(self, *, include_kept: bool = False) -> dict[str, Any]:
        shown = [*self.tensors, *self.dropped] if include_kept else self.changed()
        rows = [t.to_json() for t in shown]
        for row, t in zip(rows, shown, strict=True):
            if t in self.dropped:
                row.update(action="drop", rule=None, source=None)
        return {
            "operation": self.operation,
            "source": self.source,
            "destination": self.destination,
            "steps": [dict(s) for s in self.steps],
            "seed": self.seed,
            "std": self.std,
            "tensors": rows,
            "kept": self.count("keep"),
            "dropped": self.count("drop"),
            "reinitialized": self.count("reinit"),
            "cast": self.count("cast"),
            "renamed": sum(1 for t in self.tensors if t.renamed_from is not None),
            "averaged": self.count("average"),
            "merged": self.count("merge"),
            "inputs": [self.source, *self.inputs],
            "skipped": [s.to_json() for s in self.skipped],
            "tied_aliases": dict(self.aliases),
            "config_edits": [e.to_json() for e in self.config_edits],
            "files_written": [name for name, _ in self.files],
            "warnings": list(self.warnings),
        }


def initial_plan(ckpt: Checkpoint) -> Plan:
    """Every stored tensor copied unchanged; folded tied aliases noted; nothing else."""
    tensors = tuple(
        PlannedTensor(t.name, t.dtype, t.shape, Copy(t.name))
        for t in ckpt.tensors
        if t.name not in ckpt.aliases
    )
    skipped = tuple(
        Skipped(alias, f"tied alias of {canonical}; stored once under the canonical name")
        for alias, canonical in ckpt.aliases.items()
    )
    return Plan(
        source=str(ckpt.path),
        tensors=tensors,
        config=ckpt.config,
        aliases=dict(ckpt.aliases),
        skipped=skipped,
        warnings=tuple(ckpt.notes),
        side_dir=str(ckpt.side_dir),
    )
