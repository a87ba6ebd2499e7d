"""``--card``: DEST/README.md as a Hugging Face model card that says what was done.

Front matter (``huggingface_hub``'s ``ModelCardData``): ``base_model`` (SRC's repo id when SRC
was a Hub id, else the one SRC's own card names; left out otherwise), ``tags: [ckptsurgeon]``,
and ``library_name`` and ``license`` carried over from SRC's card. The body gives the recipe as
YAML (``ckptsurgeon apply`` of it to SRC writes the same tensors), the tool version, what
happened to how many tensors and the config.json edits; SRC's own card follows under a heading
that says it describes the source model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..plan import Plan
from ..version import __version__

README = "README.md"
SOURCE_CARD_WARNING = (
    "DEST's README.md is SRC's model card, copied: it describes SRC, not this model; pass "
    "--card to write one that says what was done"
)

_COUNTS = (
    ("drop", "dropped"),
    ("reinit", "re-initialised"),
    ("cast", "cast"),
    ("rename", "renamed"),
    ("resize", "resized"),
    ("average", "averaged"),
    ("merge", "merged"),
    ("keep", "kept unchanged"),
)


def _source_card(root: Path | None) -> tuple[dict[str, Any], str]:
    """SRC's card: its front matter (a dict) and its text, or empty."""
    path = root / README if root is not None else None
    if path is None or not path.is_file():
        return {}, ""
    from huggingface_hub import ModelCard

    try:
        card = ModelCard.load(path)
    except Exception:  # a README without valid front matter: its text alone
        return {}, path.read_text(encoding="utf-8", errors="replace")
    return card.data.to_dict(), card.text


def model_card(plan: Plan, root: Path | None, hub_id: str | None) -> bytes:
    """The card's bytes for the output of ``plan`` (SRC's folder ``root``; ``hub_id`` when SRC
    was given as a Hub repo id)."""
    import yaml
    from huggingface_hub import ModelCardData

    data, text = _source_card(root)
    base = hub_id or data.get("base_model")
    card_data = ModelCardData(
        base_model=base if isinstance(base, str | list) else None,
        tags=["ckptsurgeon"],
        library_name=data.get("library_name"),
        license=data.get("license"),
    )
    counts = [f"{n} {word}" for kind, word in _COUNTS if (n := plan.count(kind)) and kind != "keep"]
    kept = plan.count("keep")
    what = ", ".join(counts) or "no tensor changed"
    recipe = yaml.safe_dump({"steps": [dict(s) for s in plan.steps]}, sort_keys=False)
    lines = [
        f"# {Path(plan.destination).name or 'Model'}",
        "",
        f"Made from `{plan.source}` with [ckptsurgeon](https://pypi.org/project/ckptsurgeon/) "
        f"{__version__}: {what}; {kept} tensors kept unchanged.",
        "",
        "## Recipe",
        "",
        "`ckptsurgeon apply recipe.yaml SRC DEST` with this recipe writes the same tensors:",
        "",
        "```yaml",
        recipe.rstrip(),
        "```",
    ]
    if plan.input_strip:
        lines += ["", f"Names were read without the prefix {', '.join(plan.input_strip)}."]
    if plan.config_edits:
        lines += ["", "## config.json edits", ""]
        lines += [
            f"- `{e.key}`: `{json.dumps(e.old)}` -> `{json.dumps(e.new)}`"
            for e in plan.config_edits
        ]
    if text.strip():
        lines += ["", "## The source model", "", f"What follows is the card of `{plan.source}`, "
                  "the model this one was made from; it describes that model.", "",
                  text.strip()]  # fmt: skip
    front = card_data.to_yaml()
    return (f"---\n{front}\n---\n\n" + "\n".join(lines) + "\n").encode("utf-8")
