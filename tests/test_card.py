"""``--card``: DEST/README.md is a model card that says what was done; its recipe reproduces the
output; without it, a copied README.md is said to describe SRC."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import ckptsurgeon
from ckptsurgeon.cli import main

SOURCE_CARD = """---
license: apache-2.0
library_name: transformers
base_model: google-bert/bert-base-uncased
---

# Tiny BERT

A tiny test model.
"""


@pytest.fixture
def src(model_store, tmp_path: Path) -> Path:
    folder = tmp_path / "src"
    shutil.copytree(model_store("bert"), folder)
    (folder / "README.md").write_text(SOURCE_CARD)
    return folder


def cli(*args: object) -> str:
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.output


def test_the_card_says_what_was_done_and_its_recipe_reproduces_the_output(src, tmp_path):
    from huggingface_hub import ModelCard

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "steps:\n  - {op: drop, patterns: ['cls.*']}\n"
        "  - {op: reinit, top_layers: 1, seed: 3}\n  - {op: cast, dtype: bf16}\n"
    )
    out = tmp_path / "out"
    cli("apply", recipe, src, out, "--card", "--config-set", 'architectures=["BertModel"]')
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "google-bert/bert-base-uncased"
    assert card.data.tags == ["ckptsurgeon"]
    assert card.data.license == "apache-2.0" and card.data.library_name == "transformers"
    text = card.text
    assert "5 dropped, 16 re-initialised" in text and "cast" in text
    assert '- `architectures`: `["BertForMaskedLM"]` -> `["BertModel"]`' in text
    assert "## The source model" in text and text.rstrip().endswith("A tiny test model.")
    # the recipe in the body, applied to SRC, writes the same tensors
    block = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert block is not None
    again = tmp_path / "again.yaml"
    again.write_text(block.group(1))
    cli("apply", again, src, tmp_path / "again")
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (
        out / "model.safetensors"
    ).read_bytes()


def test_without_card_a_copied_readme_is_said_to_describe_src(src, tmp_path):
    r = CliRunner().invoke(main, ["drop", str(src), str(tmp_path / "o"), "-p", "cls.*"])
    assert r.exit_code == 0
    assert "DEST's README.md is SRC's model card, copied: it describes SRC" in r.output
    assert (tmp_path / "o" / "README.md").read_text() == SOURCE_CARD
    res = ckptsurgeon.drop(src, tmp_path / "api", "cls.*", card=True)
    assert "Made from" in (tmp_path / "api" / "README.md").read_text()
    assert not any("describes SRC" in w for w in res.plan.warnings)


def test_a_hub_id_src_is_the_base_model(model_store, tmp_path, monkeypatch):
    from huggingface_hub import ModelCard
    from test_hub import make_cache

    cache = tmp_path / "hf"
    make_cache(cache, "org/tiny-bert", model_store("bert"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cli("convert", "org/tiny-bert", tmp_path / "c", "--card", "--dtype", "bf16")
    card = ModelCard.load(tmp_path / "c" / "README.md")
    assert card.data.base_model == "org/tiny-bert"
    assert "## The source model" not in card.text  # it had no card


def test_a_single_file_dest_gets_no_card_and_says_so(src, tmp_path):
    r = CliRunner().invoke(main, ["convert", str(src), str(tmp_path / "one.safetensors"), "--card"])
    assert r.exit_code == 0, r.output
    assert "--card is not written: DEST is a single .safetensors file" in r.output
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("one")] == ["one.safetensors"]
