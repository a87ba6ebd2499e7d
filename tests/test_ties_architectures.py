"""Tied weights beyond BERT: the canonical member is the input embedding that transformers keeps.

Each tiny model is built by transformers and saved with ``torch.save(model.state_dict())``, so
its tied tensors share storage, as in the ``.bin`` files of the hub. The outputs load with stock
``from_pretrained`` (transformers 5.x here, the newest 4.x in CI's second run) with no missing
key and nothing left on the ``meta`` device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import assert_bitwise_equal, reference_state

from ckptsurgeon import convert, drop, open_checkpoint
from ckptsurgeon.ties import canonical_of

# family -> (canonical embedding, aliases in the state dict)
TIES = {
    "gpt2": ("transformer.wte.weight", ["lm_head.weight"]),
    "bloom": ("transformer.word_embeddings.weight", ["lm_head.weight"]),
    "t5": (
        "shared.weight",
        ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"],
    ),
    "opt": ("model.decoder.embed_tokens.weight", ["lm_head.weight"]),
    "llama": ("model.embed_tokens.weight", ["lm_head.weight"]),
}


def _build(family: str) -> Any:
    import torch
    import transformers as tf

    torch.manual_seed(0)
    if family == "gpt2":
        cfg = tf.GPT2Config(
            n_layer=2, n_embd=32, n_head=4, vocab_size=99, n_positions=64, bos_token_id=0,
            eos_token_id=0,
        )  # fmt: skip
        model = tf.GPT2LMHeadModel(cfg)
    elif family == "bloom":
        model = tf.BloomForCausalLM(
            tf.BloomConfig(n_layer=2, hidden_size=32, n_head=4, vocab_size=99)
        )
    elif family == "t5":
        cfg = tf.T5Config(d_model=32, d_ff=37, num_layers=2, num_heads=4, d_kv=8, vocab_size=99)
        model = tf.T5ForConditionalGeneration(cfg)
    elif family == "opt":
        cfg = tf.OPTConfig(
            hidden_size=32, num_hidden_layers=2, ffn_dim=37, num_attention_heads=4,
            vocab_size=99, max_position_embeddings=64, word_embed_proj_dim=32,
        )  # fmt: skip
        model = tf.OPTForCausalLM(cfg)
    else:
        cfg = tf.LlamaConfig(
            hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=99, tie_word_embeddings=True,
        )  # fmt: skip
        model = tf.LlamaForCausalLM(cfg)
    return model.eval()


@pytest.fixture(scope="module")
def tied_bins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Any]]:
    import torch

    base = tmp_path_factory.mktemp("tied")
    out = {}
    for family in TIES:
        model = _build(family)
        path = base / family
        path.mkdir()
        model.config.save_pretrained(path)
        torch.save(model.state_dict(), path / "pytorch_model.bin")
        out[family] = (path, type(model))
    return out


def _load(cls: Any, path: Path) -> tuple[Any, dict[str, list[str]]]:
    model, info = cls.from_pretrained(str(path), output_loading_info=True)
    return model, {k: sorted(v) for k, v in info.items() if isinstance(v, set | list)}


@pytest.mark.parametrize("family", list(TIES))
def test_bin_with_shared_storage_names_the_input_embedding_canonical(tied_bins, family):
    path, _ = tied_bins[family]
    canonical, aliases = TIES[family]
    ckpt = open_checkpoint(path)
    assert ckpt.aliases == dict.fromkeys(aliases, canonical)
    assert canonical_of([*aliases, canonical]) == canonical


@pytest.mark.roundtrip
@pytest.mark.parametrize("family", list(TIES))
def test_convert_keeps_the_embedding_and_loads_with_no_missing_key(tied_bins, tmp_path, family):
    import torch

    path, cls = tied_bins[family]
    canonical, aliases = TIES[family]
    out = tmp_path / "out"
    convert(path, out)
    written = reference_state(out)
    assert canonical in written and not set(aliases) & set(written)
    model, info = _load(cls, out)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    assert not any(p.is_meta for p in model.parameters())
    state = model.state_dict()
    source = reference_state(path)
    for name, tensor in written.items():
        assert_bitwise_equal(state[name], tensor, name)
        assert_bitwise_equal(source[name], tensor, name)
    for alias in aliases:  # re-tied on load
        assert torch.equal(state[alias], written[canonical]), alias


@pytest.mark.roundtrip
@pytest.mark.parametrize("family", list(TIES))
def test_dropping_the_head_alias_writes_a_loadable_model(tied_bins, tmp_path, family):
    path, cls = tied_bins[family]
    canonical, _ = TIES[family]
    out = tmp_path / "out"
    result = drop(path, out, "lm_head.*")
    assert any("lm_head.weight is a tied alias" in w for w in result.plan.warnings)
    written = reference_state(out)
    assert canonical in written and "lm_head.weight" not in written
    model, info = _load(cls, out)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    assert not any(p.is_meta for p in model.parameters())
    assert_bitwise_equal(model.state_dict()["lm_head.weight"], written[canonical])
