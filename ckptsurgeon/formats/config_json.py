"""config.json: reading it, and refusing one that would produce a broken output.

A config that is not a JSON object, or whose ``initializer_range``, ``pad_token_id``,
``vocab_size`` or layer count has the wrong type or an impossible value, would be copied next to
the new weights and break ``from_pretrained`` later (or make ckptsurgeon pick wrong rules). Every
command that writes refuses it; ``inspect`` and ``diff`` only warn.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..errors import ConfigError

LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layers", "num_layers", "n_layer")


def is_int(value: Any) -> bool:
    """An int that is not a bool (JSON true is not a count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _problem(cfg: dict[str, Any]) -> str | None:
    """What is wrong with a parsed config, or None."""
    if cfg.get("initializer_range") is not None:
        value = cfg["initializer_range"]
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"initializer_range is {value!r}, not a number"
        if not math.isfinite(value) or float(value) < 0:
            return f"initializer_range is {value!r}; it must be a finite number >= 0"
    vocab: Any = cfg.get("vocab_size")
    if vocab is not None and (not is_int(vocab) or vocab < 1):
        return f"vocab_size is {vocab!r}, not a positive integer"
    if cfg.get("pad_token_id") is not None:
        pad = cfg["pad_token_id"]
        if not is_int(pad):
            return f"pad_token_id is {pad!r}, not an integer"
        if pad < 0 or (is_int(vocab) and pad >= vocab):
            return f"pad_token_id {pad} is outside the vocabulary (vocab_size {vocab})"
    for key in LAYER_COUNT_KEYS:
        if key in cfg and cfg[key] is not None:
            value = cfg[key]
            if not is_int(value) or value < 0:
                return f"{key} is {value!r}, not a layer count"
    return None


def read_config(path: Path) -> tuple[dict[str, Any] | None, ConfigError | None]:
    """``(config, problem)`` for a config.json: ``(None, None)`` when there is none, the parsed
    object and None when it is usable, else what is wrong with it as a :class:`ConfigError`."""
    if not path.is_file():
        return None, None
    hint = "fix config.json (or replace it with the one the model was saved with)"
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        return None, ConfigError(f"config.json is not valid JSON ({exc})", str(path), hint)
    except RecursionError:
        return None, ConfigError("config.json is nested too deep to be a config", str(path), hint)
    if not isinstance(obj, dict):
        return None, ConfigError(
            f"config.json holds a JSON {type(obj).__name__}, not an object", str(path), hint
        )
    problem = _problem(obj)
    if problem is not None:
        return obj, ConfigError(f"config.json: {problem}", str(path), hint)
    return obj, None
