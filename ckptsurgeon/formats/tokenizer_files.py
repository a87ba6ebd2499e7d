"""How many tokens the tokenizer beside the weights has, read from its files without
transformers: ``tokenizer.json`` (its model's vocabulary and added tokens), else ``vocab.txt``
or ``vocab.json`` with ``added_tokens.json``. ``resize-vocab`` and ``verify`` compare it with
the embedding rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _ids(obj: Any) -> list[int]:
    return [v for v in obj.values() if isinstance(v, int)] if isinstance(obj, dict) else []


def tokenizer_length(folder: Path) -> int | None:
    """``len(tokenizer)`` as transformers counts it (the highest id + 1), or None when the
    folder holds no tokenizer whose size can be read."""
    try:
        if (folder / "tokenizer.json").is_file():
            data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
            vocab = (data.get("model") or {}).get("vocab")
            size = len(vocab) if isinstance(vocab, dict | list) else 0
            added = [t.get("id") for t in data.get("added_tokens") or [] if isinstance(t, dict)]
            return max([size - 1, *(i for i in added if isinstance(i, int))]) + 1 or None
        if (folder / "vocab.txt").is_file():
            size = len((folder / "vocab.txt").read_text(encoding="utf-8").splitlines())
        elif (folder / "vocab.json").is_file():
            size = len(json.loads((folder / "vocab.json").read_text(encoding="utf-8")))
        else:
            return None
        extra: list[int] = []
        if (folder / "added_tokens.json").is_file():
            extra = _ids(json.loads((folder / "added_tokens.json").read_text(encoding="utf-8")))
        return max([size - 1, *extra]) + 1
    except (OSError, ValueError, AttributeError):
        return None
