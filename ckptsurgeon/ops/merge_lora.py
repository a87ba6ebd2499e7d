"""``merge-lora``: a PEFT LoRA (or DoRA) adapter merged into its base model.

The adapter (``adapter_config.json`` + ``adapter_model.safetensors`` or ``.bin``; a folder or
a Hub id) is opened as a second input. Every adapted module's weight becomes what PEFT's
``PeftModel.from_pretrained(base, adapter).merge_and_unload()`` makes of it (``run.merge``):
``Linear`` ``W + (B @ A) * s``, GPT-2's ``Conv1D`` (``fan_in_fan_out``) and ``Embedding`` the
delta transposed, DoRA's row re-normalisation; ``s = lora_alpha / r`` (``/ sqrt(r)`` with
``use_rslora``; ``rank_pattern`` and ``alpha_pattern`` as PEFT matches them) times ``--scale``.
``modules_to_save`` tensors replace the base's. Everything else is copied.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import CheckpointNotFoundError, RecipeError, SelectionError, UnsupportedFormatError
from ..formats.checkpoint import open_checkpoint
from ..plan import Copy, LoraMerge, Plan, PlannedTensor
from .average import describe_input
from .base import Operation, Option

PREFIX = "base_model.model."
_LORA = re.compile(r"^(.*)\.(lora_A|lora_B)\.weight$")
_EMBEDDING = re.compile(r"^(.*)\.(lora_embedding_A|lora_embedding_B)$")
_MAGNITUDE = re.compile(r"^(.*)\.lora_magnitude_vector(\.weight)?$")


def adapter_folder(ref: str) -> Path:
    """The adapter's folder: a local path, or a Hub id's snapshot in the cache."""
    p = Path(ref)
    if not p.exists():
        from ..formats.hub import resolve

        p = resolve(ref, None)
    if not (p / "adapter_config.json").is_file():
        raise CheckpointNotFoundError(
            "not a PEFT adapter (no adapter_config.json)",
            str(ref),
            "give the folder PEFT's save_pretrained wrote (adapter_config.json and "
            "adapter_model.safetensors)",
        )
    return p


def read_adapter_config(folder: Path) -> dict[str, Any]:
    where = folder / "adapter_config.json"
    try:
        config = json.loads(where.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise RecipeError(
            f"adapter_config.json is not valid JSON ({str(exc)[:80]})", str(where), "re-save it"
        ) from None
    if not isinstance(config, dict):
        raise RecipeError("adapter_config.json is not a JSON object", str(where), "re-save it")
    kind = str(config.get("peft_type", "")).upper()
    if kind != "LORA":
        raise UnsupportedFormatError(
            f"the adapter is {kind or 'of no PEFT type'}, not LoRA: merge-lora merges LoRA and "
            "DoRA adapters",
            str(where),
            "merge other adapter types with PEFT itself (merge_and_unload)",
        )
    return config


def pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's ``get_pattern_key``: the first pattern key matching the module's name."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return patterns[key]
    return default


def _weights_file(folder: Path) -> Path:
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise CheckpointNotFoundError(
        "the adapter has no weights (adapter_model.safetensors or adapter_model.bin)",
        str(folder),
        "copy the adapter's weight file next to adapter_config.json",
    )


def plan_merge_lora(plan: Plan, adapter: str, scale: float = 1.0) -> Plan:
    folder = adapter_folder(adapter)
    config = read_adapter_config(folder)
    weights_path = _weights_file(folder)
    opened = open_checkpoint(weights_path)
    where = str(weights_path)
    changed = [t.name for t in plan.tensors if t.computed]
    if changed:
        raise RecipeError(
            f"merge_lora must come before steps that change values ({changed[0]!r} already did)",
            plan.source,
            "put the merge_lora step first in the recipe",
        )
    if config.get("lora_bias"):
        raise UnsupportedFormatError(
            "the adapter trains biases (lora_bias), which merge-lora does not merge",
            where,
            "merge it with PEFT itself (merge_and_unload)",
        )
    index = len(plan.inputs) + 1
    by_source = {t.source.tensor: t for t in plan.tensors if isinstance(t.source, Copy)}
    modules: dict[str, dict[str, str]] = {}
    replaced: dict[str, str] = {}
    for info in opened.tensors:
        key = info.name
        name = key[len(PREFIX) :] if key.startswith(PREFIX) else key
        found = _LORA.match(name) or _EMBEDDING.match(name)
        if found:
            part = found.group(2).replace("lora_embedding_", "embedding_")
            modules.setdefault(found.group(1), {})[part] = key
        elif (m := _MAGNITUDE.match(name)) is not None:
            modules.setdefault(m.group(1), {})["magnitude"] = key
        elif ".lora_" in name:
            raise UnsupportedFormatError(
                f"adapter tensor {key!r} is of a kind merge-lora does not know",
                where,
                "merge the adapter with PEFT itself (merge_and_unload)",
            )
        else:  # modules_to_save: the adapter's trained copy replaces the base tensor
            if name not in by_source:
                raise SelectionError(
                    f"adapter tensor {key!r} replaces {name!r}, which the base does not have",
                    where,
                    "merge the adapter into the model it was trained on",
                )
            replaced[name] = key
    infos = {t.name: t for t in opened.tensors}
    fan_in_fan_out = bool(config.get("fan_in_fan_out"))
    scale_factor = float(scale)
    merges: dict[str, LoraMerge] = {}
    for module, parts in sorted(modules.items()):
        target = module + ".weight"
        if target in plan.aliases:
            raise SelectionError(
                f"the adapter changes {target!r}, a tied alias of {plan.aliases[target]!r}",
                where,
                "merge an adapter trained on the canonical tensor",
            )
        base = by_source.get(target)
        if base is None:
            raise SelectionError(
                f"adapter module {module!r} matches no base tensor (looked for {target!r})",
                where,
                "merge the adapter into the model it was trained on",
            )
        embedding = "embedding_A" in parts or "embedding_B" in parts
        a_key = parts.get("embedding_A" if embedding else "lora_A")
        b_key = parts.get("embedding_B" if embedding else "lora_B")
        if a_key is None or b_key is None:
            raise SelectionError(
                f"adapter module {module!r} has only one of its two LoRA matrices",
                where,
                "re-save the adapter",
            )
        a, b = infos[a_key], infos[b_key]
        r = a.shape[0]
        kind = "embedding" if embedding else "conv1d" if fan_in_fan_out else "linear"
        rows, cols = (b.shape[0], a.shape[1]) if kind == "linear" else (a.shape[1], b.shape[0])
        if len(a.shape) != 2 or len(b.shape) != 2 or b.shape[1] != r or base.shape != (rows, cols):
            raise SelectionError(
                f"adapter module {module!r}: A {list(a.shape)} and B {list(b.shape)} do not fit "
                f"base tensor {target!r} {list(base.shape)}",
                where,
                "merge the adapter into the model it was trained on",
            )
        rank = int(pattern_value(config.get("rank_pattern") or {}, module, config.get("r", r)))
        if rank != r:
            raise SelectionError(
                f"adapter module {module!r} has rank {r}, its config says {rank}",
                where,
                "re-save the adapter",
            )
        alpha = pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha"))
        if not isinstance(alpha, int | float):
            raise RecipeError("adapter_config.json has no lora_alpha", where, "re-save it")
        root = math.sqrt(r) if config.get("use_rslora") else r
        scaling = scale_factor * alpha / root
        magnitude = parts.get("magnitude")
        if magnitude is not None and kind != "linear":
            raise UnsupportedFormatError(
                f"adapter module {module!r} is DoRA on a {kind} layer, which merge-lora does not "
                "merge",
                where,
                "merge it with PEFT itself (merge_and_unload)",
            )
        merges[target] = LoraMerge(
            target,
            (index, a_key),
            (index, b_key),
            scaling,
            kind,
            r,
            None if magnitude is None else (index, magnitude),
        )
    _check_targets(config, list(by_source), where)
    out: list[PlannedTensor] = []
    for t in plan.tensors:
        assert isinstance(t.source, Copy)
        name = t.source.tensor
        if name in merges:
            out.append(replace(t, source=merges[name]))
        elif name in replaced:
            r_info = infos[replaced[name]]
            if (r_info.dtype, r_info.shape) != (t.native, t.shape):
                raise SelectionError(
                    f"adapter tensor {replaced[name]!r} is {r_info.dtype}{list(r_info.shape)}, "
                    f"the base's {name!r} {t.native}{list(t.shape)}",
                    where,
                    "merge the adapter into the model it was trained on",
                )
            out.append(replace(t, source=Copy(replaced[name], index)))
        else:
            out.append(t)
    if not merges and not replaced:
        raise SelectionError("the adapter changes no tensor", where, "check the adapter")
    plan = replace(
        plan,
        tensors=tuple(out),
        inputs=(*plan.inputs, str(weights_path)),
        input_records=(*plan.input_records, describe_input(adapter, opened)),
    )
    mismatch = _base_mismatch(config, plan.config)
    return plan.warn(mismatch) if mismatch else plan


def _check_targets(config: dict[str, Any], names: list[str], where: str) -> None:
    """Each ``target_modules`` name must be the last part(s) of some base module."""
    targets = config.get("target_modules")
    if not isinstance(targets, list):
        return  # a regex or "all-linear": PEFT resolved it when it trained
    modules = {n.rsplit(".", 1)[0] for n in names if "." in n}
    for target in targets:
        if not any(m == target or m.endswith("." + str(target)) for m in modules):
            raise SelectionError(
                f"target_modules entry {target!r} matches no module of the base",
                where,
                "merge the adapter into the model it was trained on",
            )


def _base_mismatch(config: dict[str, Any], base: dict[str, Any] | None) -> str:
    """A warning when the model the adapter names (read, never trusted as a path: only a
    config.json there is looked at) differs from BASE in type or sizes."""
    named = config.get("base_model_name_or_path")
    if not isinstance(named, str) or not named or base is None:
        return ""
    try:
        folder = Path(named)
        if not folder.is_dir():
            from ..formats.hub import resolve

            folder = resolve(named, None)
        theirs = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except Exception:  # not here, not cached: nothing to compare with
        return ""
    keys = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size")
    differ = [k for k in keys if k in theirs and k in base and theirs[k] != base[k]]
    if not differ:
        return ""
    k = differ[0]
    return (
        f"the adapter was trained on {named}, whose {k} is {theirs[k]!r}; BASE's is {base[k]!r}: "
        "check that BASE is the model it was trained on"
    )


MERGE_LORA = Operation(
    "merge-lora",
    "Merge a PEFT LoRA or DoRA adapter into BASE: BASE ADAPTER DEST, as PEFT's merge_and_unload.",
    (
        Option(
            "adapter",
            ("--adapter",),
            "str",
            "The PEFT adapter folder or Hub id.",
            metavar="ADAPTER",
            required=True,
        ),
        Option(
            "scale",
            ("--scale",),
            "float",
            "Multiply every delta (PEFT's scale).",
            1.0,
            minimum=0.0,
        ),
    ),
    plan_merge_lora,
    details=(
        "ADAPTER holds adapter_config.json and adapter_model.safetensors (or .bin). Linear "
        "W + (B @ A) * s with s = lora_alpha / r (lora_alpha / sqrt(r) with use_rslora; "
        "rank_pattern and alpha_pattern as PEFT matches them); Conv1D (fan_in_fan_out) and "
        "Embedding the delta transposed; DoRA's rows re-normalised; modules_to_save tensors "
        "replace the base's. float32 and float64 bases are computed in PEFT's order (equal to "
        "merge_and_unload bit for bit), whole: memory two copies of the largest merged tensor. "
        "bf16 and fp16 bases are merged in float32 a band of rows at a time and rounded once: "
        "memory a chunk."
    ),
    action="merge",
    inputs="adapter",
)
