"""resize-vocab: embeddings, untied heads and head biases grown or shrunk, streaming."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import (
    assert_bitwise_equal,
    load_model,
    reference_state,
    save_models,
    tiny_clip,
    tiny_modernbert,
)
from test_hardening import assert_clean_error, cli, leftovers, tree_hash

from ckptsurgeon import apply, resize_vocab


@pytest.mark.roundtrip
@pytest.mark.parametrize("layout", ["safetensors", "bin"])
def test_grow_with_mean_rows_keeps_the_tied_head_tied(model_store, tmp_path, layout):
    import torch

    src = model_store("bert", layout)
    out = tmp_path / "out"
    res = resize_vocab(src, out, 110)
    assert [(e.key, e.old, e.new) for e in res.plan.config_edits] == [("vocab_size", 99, 110)]
    model, info = load_model(out, "bert")
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    assert model.config.vocab_size == 110
    old = reference_state(src)
    emb = model.bert.embeddings.word_embeddings.weight.detach()
    assert emb.shape == (110, 32)
    old_emb = old["bert.embeddings.word_embeddings.weight"]
    assert_bitwise_equal(emb[:99].contiguous(), old_emb)
    mean = old_emb.double().mean(0).float()
    for row in emb[99:]:
        assert torch.equal(row, mean)
    bias = model.cls.predictions.bias.detach()
    assert_bitwise_equal(bias[:99].contiguous(), old["cls.predictions.bias"])
    assert torch.equal(bias[99:], torch.zeros(11))
    decoder = model.cls.predictions.decoder.weight
    assert decoder.data_ptr() == model.bert.embeddings.word_embeddings.weight.data_ptr()


@pytest.mark.roundtrip
def test_shrink_keeps_the_first_rows_roberta_head_bias(model_store, tmp_path):
    src = model_store("roberta")
    resize_vocab(src, tmp_path / "out", 50)
    model, info = load_model(tmp_path / "out", "roberta")
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    old, new = reference_state(src), reference_state(tmp_path / "out")
    assert_bitwise_equal(
        new["roberta.embeddings.word_embeddings.weight"],
        old["roberta.embeddings.word_embeddings.weight"][:50].contiguous(),
    )
    assert_bitwise_equal(new["lm_head.bias"], old["lm_head.bias"][:50].contiguous())
    assert json.loads((tmp_path / "out" / "config.json").read_text())["vocab_size"] == 50


def test_normal_rows_are_seeded_and_drawn_at_the_configured_std(tmp_path):
    import torch
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(
        hidden_size=256, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=99, tie_word_embeddings=False, initializer_range=0.02,
    )  # fmt: skip
    src = tmp_path / "llama"
    tf.LlamaForCausalLM(cfg).save_pretrained(src)
    resize_vocab(src, tmp_path / "a", 299, init="normal", seed=1)
    resize_vocab(src, tmp_path / "b", 299, init="normal", seed=1)
    resize_vocab(src, tmp_path / "c", 299, init="normal", seed=2)
    assert tree_hash(tmp_path / "a") == tree_hash(tmp_path / "b") != tree_hash(tmp_path / "c")
    a = reference_state(tmp_path / "a")
    for name in ("model.embed_tokens.weight", "lm_head.weight"):  # untied: both resized
        new = a[name][99:].double()
        assert new.shape == (200, 256)
        assert abs(new.mean()) < 0.001 and abs(new.std() - 0.02) < 0.0005, name
    assert not torch.equal(a["model.embed_tokens.weight"][99:], a["lm_head.weight"][99:])
    model, info = tf.LlamaForCausalLM.from_pretrained(str(tmp_path / "a"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.lm_head.weight.shape == (299, 256)


def test_resize_inside_a_recipe_and_dry_run(model_store, tmp_path):
    res = apply(
        [{"op": "resize_vocab", "size": 120}, {"op": "cast", "dtype": "bf16"}],
        model_store("bert"),
        tmp_path / "out",
        dry_run=True,
    )
    row = next(t for t in res.plan.tensors if t.name == "bert.embeddings.word_embeddings.weight")
    assert row.describe() == (
        "rows 0-98 of bert.embeddings.word_embeddings.weight + 21 new rows (mean), cast F32 -> BF16"
    )
    assert row.shape == (120, 32) and row.dtype == "BF16"
    assert not (tmp_path / "out").exists()
    code, _, err, _ = cli(
        "apply", _steps(tmp_path, [{"op": "cast", "dtype": "bf16"}, {"op": "resize-vocab", "size": 120}]),
        model_store("bert"), tmp_path / "out",
    )  # fmt: skip
    assert_clean_error(
        code,
        err,
        "recipe step 2 (resize-vocab)",
        "put the resize-vocab step before reinit and cast steps",
    )


def _steps(tmp_path, steps):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"steps": steps}))
    return path


@pytest.mark.parametrize(
    ("family", "args", "message"),
    [
        (
            "roberta",
            ["--size", "1"],
            "Error: pad_token_id 1 does not fit a vocabulary of 1 ({src}): give --size > 1, or change pad_token_id in config.json first",
        ),
        (
            "bert",
            ["--size", "99"],
            "Error: the vocabulary already has 99 entries ({src}): give another --size",
        ),
        (
            "bert",
            ["--size", "0"],
            "Error: Invalid value for '--size': 0 is not in the range x>=1. (see '{prog} resize-vocab --help')",
        ),
        ("bert", [], "Error: Missing option '--size'. (see '{prog} resize-vocab --help')"),
    ],
)
def test_resize_errors(model_store, tmp_path, family, args, message):
    src = model_store(family)
    code, _, err, _ = cli("resize-vocab", src, tmp_path / "out", *args)
    assert_clean_error(code, err)
    assert err.strip() == message.format(src=src, prog="main")  # CliRunner's program name
    assert leftovers(tmp_path) == [] and not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def modernbert_and_clip(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Any]]:
    import torch

    torch.manual_seed(0)
    base = tmp_path_factory.mktemp("vocab-archs")
    mb = tiny_modernbert(layers=2)
    with torch.no_grad():
        mb.decoder.bias.add_(torch.randn_like(mb.decoder.bias))
    clip = tiny_clip(pad_token_id=1, bos_token_id=2, eos_token_id=3)
    return save_models(base, {"modernbert": mb, "clip": clip})


@pytest.mark.roundtrip
@pytest.mark.parametrize(
    ("name", "embedding", "others", "key"),
    [
        ("modernbert", "model.embeddings.tok_embeddings.weight", ["decoder.bias"], "vocab_size"),
        (
            "clip",
            "text_model.embeddings.token_embedding.weight",
            [],
            "text_config.vocab_size",
        ),
    ],
)
@pytest.mark.parametrize("size", [120, 64])
def test_modernbert_and_clip_embeddings_are_found(
    modernbert_and_clip, tmp_path, name, embedding, others, key, size
):
    """resize-vocab did not find ModernBERT's tok_embeddings (nor its head bias decoder.bias)
    nor CLIP's token_embedding (config's text_config.vocab_size)."""
    from ckptsurgeon import resize_vocab

    src, cls = modernbert_and_clip[name]
    res = resize_vocab(src, tmp_path / "out", size)
    resized = sorted(t.name for t in res.plan.tensors if t.action == "resize")
    assert resized == sorted([embedding, *others])
    assert [(e.key, e.old, e.new) for e in res.plan.config_edits] == [(key, 99, size)]
    model, info = cls.from_pretrained(str(tmp_path / "out"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    before, after = reference_state(src), reference_state(tmp_path / "out")
    for n in [embedding, *others]:
        keep = min(size, 99)
        assert after[n].shape[0] == size
        assert_bitwise_equal(after[n][:keep], before[n][:keep], n)
        if size > 99 and n.endswith("bias"):
            assert not after[n][99:].any()
        elif size > 99:
            assert_bitwise_equal(after[n][99], before[n].double().mean(0).float(), n)
    assert model.state_dict()[embedding].shape[0] == size
