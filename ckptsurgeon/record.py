"""The output's record: the one owner of the ``"ckptsurgeon"`` entry of ``__metadata__``.

Every checkpoint ckptsurgeon writes carries one JSON string under ``"ckptsurgeon"``: the tool
and its version, what ran (a verb's ``operation`` and ``arguments``, or a recipe's normalised
``steps``), folded tied aliases, the library versions ``--rules model`` drew with, and (for a
directory) the entries copied beside the weights. No paths and no times, so reruns are
byte-identical. It is written here (:func:`encode`, :func:`with_copied`), read back here
(:func:`decode`, :func:`copied_entries`) and turned back into recipe steps here
(:func:`recipe_of`): ``--overwrite`` and ``verify --against`` rely on it.
"""

from __future__ import annotations

import json
from typing import Any

from .version import __version__

KEY = "ckptsurgeon"


def encode(record: dict[str, Any]) -> dict[str, str]:
    """The ``__metadata__`` entries holding ``record`` (with the tool and its version)."""
    full = {"tool": "ckptsurgeon", "version": __version__, **record}
    return {KEY: _dumps(full)}


def decode(metadata: dict[str, str]) -> dict[str, Any] | None:
    """The record in a checkpoint's ``__metadata__``, or None (absent, or not a JSON object)."""
    text = metadata.get(KEY)
    if text is None:
        return None
    try:
        record = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def with_copied(metadata: dict[str, str], copied: list[str]) -> dict[str, str]:
    """The metadata with the entries copied beside the weights recorded, so that a later
    ``--overwrite`` knows them as ckptsurgeon's own."""
    record = decode(metadata)
    if record is None:
        return metadata
    record["copied"] = copied
    return {**metadata, KEY: _dumps(record)}


def copied_entries(metadata: dict[str, str]) -> set[str] | None:
    """The entries recorded as copied beside the weights; None when not written by us."""
    record = decode(metadata)
    if record is None:
        return None
    copied = record.get("copied", [])
    return {c for c in copied if isinstance(c, str)} if isinstance(copied, list) else set()


def recipe_of(record: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """The recipe steps that made the output, and the prefixes stripped from SRC's names."""
    if record.get("operation") == "apply":
        return list(record.get("steps", [])), []
    arguments = dict(record.get("arguments", {}))
    strip = list(arguments.pop("strip_prefix", []) or [])
    config_set = arguments.pop("config_set", None)
    steps = [{"op": record.get("operation"), **arguments}]
    if config_set:
        steps.append({"op": "config", "set": config_set})
    return steps, strip


def _dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"))
