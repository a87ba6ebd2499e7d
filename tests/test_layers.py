"""layers: keep, drop, reorder and repeat blocks; config.json follows; outputs load in transformers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    assert_bitwise_equal,
    model_class,
    reference_state,
    save_models,
    tiny_clip,
    tiny_modernbert,
)
from test_hardening import assert_clean_error, cli, leftovers

from ckptsurgeon import apply, layers, open_checkpoint
from ckptsurgeon.formats.safetensors import build_header

STACKS = {
    "bert": ("bert.encoder.layer", 4, "num_hidden_layers"),
    "roberta": ("roberta.encoder.layer", 3, "num_hidden_layers"),
    "distilbert": ("distilbert.transformer.layer", 3, "n_layers"),
    "electra": ("electra.encoder.layer", 3, "num_hidden_layers"),
}


def _check_layers(src: Path, out: Path, prefix: str, order: list[int]) -> None:
    """Each new layer i is old layer order[i] byte for byte; everything else unchanged."""
    old, new = reference_state(src), reference_state(out)
    for name, tensor in new.items():
        if name.startswith(prefix + "."):
            i, rest = name[len(prefix) + 1 :].split(".", 1)
            assert_bitwise_equal(tensor, old[f"{prefix}.{order[int(i)]}.{rest}"], name)
        else:
            assert_bitwise_equal(tensor, old[name], name)
    folded = open_checkpoint(src).aliases  # tied aliases a .bin stores once
    per_layer: dict[int, int] = {}
    for n in old:
        if n.startswith(prefix + ".") and n not in folded:
            i = int(n[len(prefix) + 1 :].split(".", 1)[0])
            per_layer[i] = per_layer.get(i, 0) + 1
    outside = {n for n in old if not n.startswith(prefix + ".") and n not in folded}
    assert len(new) == len(outside) + sum(per_layer[i] for i in order)


def _load(family_or_cls: Any, path: Path) -> tuple[Any, dict[str, list[str]]]:
    cls = model_class(family_or_cls) if isinstance(family_or_cls, str) else family_or_cls
    model, info = cls.from_pretrained(str(path), output_loading_info=True)
    return model, {k: sorted(v) for k, v in info.items() if isinstance(v, set | list)}


@pytest.mark.roundtrip
@pytest.mark.parametrize("family", list(STACKS))
@pytest.mark.parametrize(
    ("args", "order"),
    [
        (["--keep", "2,0"], [2, 0]),
        (["--drop", "1"], None),
        (["--keep", "0-1,1-2"], [0, 1, 1, 2]),  # depth up-scaling: blocks copied twice
    ],
)
def test_layers_load_as_the_new_depth(model_store, tmp_path, family, args, order):
    src = model_store(family, "bin")
    prefix, count, key = STACKS[family]
    if order is None:
        order = [i for i in range(count) if i != 1]
    out = tmp_path / "out"
    code, stdout, err, _ = cli("layers", src, out, *args)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config[key] == len(order)
    model, info = _load(family, out)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    assert not any(p.is_meta for p in model.parameters())
    _check_layers(src, out, prefix, order)
    state = model.state_dict()
    for name, tensor in reference_state(out).items():
        assert_bitwise_equal(state[name], tensor, name)


@pytest.fixture(scope="module")
def bert_base_seqcls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bert-base-shaped BertForSequenceClassification (12 layers, hidden 768)."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    model = tf.BertForSequenceClassification(tf.BertConfig(num_labels=3))
    path = tmp_path_factory.mktemp("bert-base") / "model"
    model.save_pretrained(path)
    return path


@pytest.mark.roundtrip
def test_distil_a_six_layer_student_from_bert_base(bert_base_seqcls, tmp_path):
    import transformers as tf

    keep = [0, 2, 4, 7, 9, 11]
    out = tmp_path / "student"
    res = layers(bert_base_seqcls, out, keep="0,2,4,7,9,11")
    assert [(e.key, e.old, e.new) for e in res.plan.config_edits] == [("num_hidden_layers", 12, 6)]
    model, info = _load(tf.BertForSequenceClassification, out)
    assert model.config.num_hidden_layers == 6 and len(model.bert.encoder.layer) == 6
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    _check_layers(bert_base_seqcls, out, "bert.encoder.layer", keep)


@pytest.mark.roundtrip
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_decoder_stacks(tmp_path, family):
    import torch
    import transformers as tf

    torch.manual_seed(0)
    if family == "gpt2":
        cfg = tf.GPT2Config(n_layer=4, n_embd=32, n_head=4, vocab_size=99, n_positions=64)
        model, prefix, key = tf.GPT2LMHeadModel(cfg), "transformer.h", "n_layer"
    else:
        cfg = tf.LlamaConfig(
            hidden_size=32, intermediate_size=37, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=99,
        )  # fmt: skip
        model, prefix, key = tf.LlamaForCausalLM(cfg), "model.layers", "num_hidden_layers"
    src = tmp_path / "src"
    model.save_pretrained(src)
    layers(src, tmp_path / "out", keep=[3, 1])
    loaded, info = _load(type(model), tmp_path / "out")
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    assert getattr(loaded.config, key) == 2
    _check_layers(src, tmp_path / "out", prefix, [3, 1])


def _synthetic(path: Path, names: list[str], config: dict[str, Any]) -> Path:
    import numpy as np

    path.mkdir()
    data = np.arange(4, dtype=np.float32).tobytes()
    header, _ = build_header([(n, "F32", (4,), 16) for n in names], {"format": "pt"})
    (path / "model.safetensors").write_bytes(header + data * len(names))
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return path


def test_config_per_layer_lists_follow_and_other_keys_keep_their_order(tmp_path):
    names = [f"model.layers.{i}.mlp.weight" for i in range(4)] + ["model.norm.weight"]
    config = {
        "model_type": "llama",
        "layer_types": ["sliding", "full", "sliding", "full"],
        "num_hidden_layers": 4,
        "architectures": ["LlamaForCausalLM"],
        "zzz": 1,
    }
    src = _synthetic(tmp_path / "src", names, config)
    code, out, err, _ = cli("layers", src, tmp_path / "out", "--keep", "3,0,0")
    assert code == 0, err
    assert "config.json: num_hidden_layers: 4 -> 3" in out
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written == {
        **config,
        "layer_types": ["full", "sliding", "sliding"],
        "num_hidden_layers": 3,
    }
    assert list(written) == list(config)
    assert (tmp_path / "out" / "config.json").read_text() == json.dumps(written, indent=2) + "\n"


def test_dry_run_json_shows_the_renumbering(model_store, tmp_path):
    code, out, err, _ = cli(
        "layers", model_store("bert"), tmp_path / "o", "--keep", "3", "--dry-run", "--json"
    )
    assert code == 0, err
    plan = json.loads(out)
    moved = {t["name"]: t for t in plan["tensors"] if t["action"] == "rename"}
    assert moved["bert.encoder.layer.0.output.dense.weight"]["source"] == (
        "copy of bert.encoder.layer.3.output.dense.weight"
    )
    assert plan["config_edits"] == [{"key": "num_hidden_layers", "old": 4, "new": 1}]
    assert plan["dropped"] == 48 and not (tmp_path / "o").exists()


def test_layers_inside_a_recipe(model_store, tmp_path):
    res = apply(
        [{"op": "layers", "drop": "0-1"}, {"op": "reinit", "top_layers": 1}],
        model_store("bert"),
        tmp_path / "out",
    )
    assert res.plan.config["num_hidden_layers"] == 2
    assert {
        t.name.split(".")[3]
        for t in res.plan.tensors
        if t.action == "reinit" and ".layer." in t.name
    } == {"1"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--keep", "0,4"],
            "Error: layer 4 is out of range: bert.encoder.layer has layers 0-3 ({src}): give indices from 0 to 3",
        ),
        (
            ["--drop", "0-3"],
            "Error: no layer of bert.encoder.layer would remain ({src}): keep at least one layer",
        ),
        (
            ["--keep", "0", "--drop", "1"],
            "Error: give exactly one of --keep LIST and --drop LIST ({src}): e.g. --keep 0,2,4",
        ),
        ([], "Error: give exactly one of --keep LIST and --drop LIST ({src}): e.g. --keep 0,2,4"),
        (
            ["--keep", "0,a"],
            "Error: --keep item 'a' is not an index or a range (layers): write indices and inclusive ranges: 0,2,4-6",
        ),
        (["--keep", "3-1"], "Error: --keep range '3-1' runs backwards (layers): write 1-3"),
        (
            ["--keep", "0", "--stack", "decoder.block"],
            "Error: no layer stack 'decoder.block' (no names like 'decoder.block.0.*') ({src}): stacks found: bert.encoder.layer",
        ),
    ],
)
def test_layers_errors(model_store, tmp_path, args, message):
    src = model_store("bert")
    code, _, err, _ = cli("layers", src, tmp_path / "out", *args)
    assert_clean_error(code, err)
    assert err.strip() == message.format(src=src)
    assert list(tmp_path.iterdir()) == []


def test_several_stacks_need_stack_and_config_must_agree(tmp_path):
    names = [f"{s}.{i}.w" for s in ("encoder.layer", "decoder.layers") for i in range(2)]
    src = _synthetic(tmp_path / "src", names, {"num_layers": 2, "num_decoder_layers": 2})
    code, _, err, _ = cli("layers", src, tmp_path / "out", "--keep", "0")
    assert_clean_error(
        code,
        err,
        "several layer stacks found: decoder.layers (2 layers), encoder.layer (2 layers)",
        "--stack PREFIX",
    )
    code, out, err, _ = cli(
        "layers", src, tmp_path / "out", "--keep", "1", "--stack", "decoder.layers"
    )
    assert code == 0, err
    assert json.loads((tmp_path / "out" / "config.json").read_text()) == {
        "num_layers": 2,
        "num_decoder_layers": 1,
    }
    assert sorted(open_checkpoint(tmp_path / "out").names) == [
        "decoder.layers.0.w",
        "encoder.layer.0.w",
        "encoder.layer.1.w",
    ]
    shutil.rmtree(tmp_path / "out")
    (src / "config.json").write_text('{"num_hidden_layers": 5}')
    names = [f"bert.encoder.layer.{i}.w" for i in range(3)]
    bad = _synthetic(tmp_path / "bad", names, {"num_hidden_layers": 5})
    code, _, err, _ = cli("layers", bad, tmp_path / "out", "--keep", "0")
    assert_clean_error(code, err, "config.json says 5 layers but the weights have 3")
    assert leftovers(tmp_path) == []


@pytest.fixture(scope="module")
def t5_and_clip(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Any]]:
    import torch
    import transformers as tf

    torch.manual_seed(0)
    base = tmp_path_factory.mktemp("stacks")
    t5 = tf.T5ForConditionalGeneration(
        tf.T5Config(
            d_model=32,
            d_ff=37,
            num_layers=3,
            num_decoder_layers=3,
            num_heads=4,
            d_kv=8,
            vocab_size=99,
        )
    )
    return save_models(base, {"t5": t5, "clip": tiny_clip(text_layers=3, vision_layers=2)})


@pytest.mark.roundtrip
@pytest.mark.parametrize(
    ("name", "stack", "keep", "key"),
    [
        ("t5", "decoder.block", [0, 2], "num_decoder_layers"),
        ("t5", "encoder.block", [0, 1, 1, 2], "num_layers"),
        ("clip", "text_model.encoder.layers", [2, 0], "text_config.num_hidden_layers"),
        ("clip", "vision_model.encoder.layers", [1], "vision_config.num_hidden_layers"),
    ],
)
def test_several_stacks_t5_and_clip(t5_and_clip, tmp_path, name, stack, keep, key):
    src, cls = t5_and_clip[name]
    code, _, err, _ = cli("layers", src, tmp_path / "x", "--keep", "0")
    assert_clean_error(code, err, "several layer stacks found", stack, "--stack PREFIX")
    res = layers(src, tmp_path / "out", keep=keep, stack=stack)
    assert [(e.key, e.new) for e in res.plan.config_edits] == [(key, len(keep))]
    model, info = _load(cls, tmp_path / "out")
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    assert not any(p.is_meta for p in model.parameters())
    _check_layers(src, tmp_path / "out", stack, keep)


def test_reinit_top_layers_in_a_chosen_stack_and_albert(t5_and_clip, tmp_path):
    from ckptsurgeon import reinit

    src, _ = t5_and_clip["t5"]
    code, _, err, _ = cli("reinit", src, tmp_path / "x", "--top-layers", "1")
    assert_clean_error(
        code, err, "several layer stacks found: decoder.block (3 layers), encoder.block (3 layers)"
    )
    res = reinit(
        src, tmp_path / "out", "decoder.block.2.layer.0.SelfAttention.q.weight", dry_run=True
    )
    assert res.plan.count("reinit") == 1
    code, out, err, _ = cli(
        "reinit",
        src,
        tmp_path / "y",
        "--top-layers",
        "1",
        "--stack",
        "decoder.block",
        "--dry-run",
        "--json",
    )
    assert code == 0, err
    names = {t["name"] for t in json.loads(out)["tensors"]}
    assert names and all(n.startswith("decoder.block.2.") for n in names)
    albert = _synthetic(
        tmp_path / "albert",
        ["albert.encoder.albert_layer_groups.0.albert_layers.0.ffn.weight", "albert.embeddings.x"],
        {"model_type": "albert", "num_hidden_layers": 12},
    )
    code, _, err, _ = cli("reinit", albert, tmp_path / "z", "--top-layers", "2")
    assert_clean_error(code, err, "ALBERT shares one layer group across all its layers")


@pytest.mark.roundtrip
@pytest.mark.parametrize(
    ("stack", "args", "order"),
    [
        ("encoder.block", {"drop": [0]}, [1, 2]),
        ("decoder.block", {"keep": [1]}, [1]),
        ("encoder.block", {"keep": [2, 0, 0]}, [2, 0, 0]),  # block 0 moves and repeats
    ],
)
def test_t5_relative_attention_bias_stays_with_the_new_first_block(
    t5_and_clip, tmp_path, stack, args, order
):
    """T5 stores its relative position bias in block 0 of each stack only; every block uses it.
    Whatever blocks are kept, the new block 0 carries the source's block-0 bias, bytes
    unchanged, and no other block has one."""
    src, cls = t5_and_clip["t5"]
    bias = "layer.0.SelfAttention.relative_attention_bias.weight"
    res = layers(src, tmp_path / "out", stack=stack, **args)
    model, info = _load(cls, tmp_path / "out")
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    old, new = reference_state(src), reference_state(tmp_path / "out")
    assert_bitwise_equal(new[f"{stack}.0.{bias}"], old[f"{stack}.0.{bias}"])
    assert [n for n in new if n.startswith(stack) and n.endswith(bias)] == [f"{stack}.0.{bias}"]
    for name, tensor in new.items():  # every other tensor is its old block's, byte for byte
        if name.startswith(stack + ".") and not name.endswith(bias):
            i, rest = name[len(stack) + 1 :].split(".", 1)
            assert_bitwise_equal(tensor, old[f"{stack}.{order[int(i)]}.{rest}"], name)
    kept = {t.name: t for t in res.plan.tensors}
    if order[0] != 0:
        assert kept[f"{stack}.0.{bias}"].renamed_from is None  # same name, block 0's own bytes
    assert all(not t.name.endswith(bias) for t in res.plan.dropped)


@pytest.fixture(scope="module")
def modernbert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("modernbert") / "mb"
    tiny_modernbert().save_pretrained(path)
    return path


@pytest.mark.roundtrip
def test_modernbert_first_layer_without_attn_norm_is_refused_or_kept_first(modernbert, tmp_path):
    """ModernBERT's layer 0 has no attn_norm (an Identity), the others have one: a block may
    only land where a block of the same tensors was; keeping layer 0 first works."""
    import transformers as tf

    for args in (["--drop", "0"], ["--keep", "1,0"], ["--keep", "0,0"]):
        code, _, err, _ = cli("layers", modernbert, tmp_path / "x", *args)
        assert_clean_error(
            code, err, "the blocks of model.layers are not alike", "'attn_norm.weight'",
            "keep model.layers.0 first",
        )  # fmt: skip
        assert leftovers(tmp_path) == []
    layers(modernbert, tmp_path / "out", keep=[0, 2, 2])
    _, info = _load(tf.ModernBertForMaskedLM, tmp_path / "out")
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    _check_layers(modernbert, tmp_path / "out", "model.layers", [0, 2, 2])


@pytest.mark.roundtrip
def test_longt5_global_relative_bias_follows_the_first_block_too(tmp_path):
    import transformers as tf

    cfg = tf.LongT5Config(
        d_model=32, d_ff=37, num_layers=3, num_decoder_layers=2, num_heads=4, d_kv=8,
        vocab_size=99, encoder_attention_type="transient-global",
    )  # fmt: skip
    tf.LongT5ForConditionalGeneration(cfg).save_pretrained(tmp_path / "src")
    layers(tmp_path / "src", tmp_path / "out", keep=[2, 1], stack="encoder.block")
    _, info = _load(tf.LongT5ForConditionalGeneration, tmp_path / "out")
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    old, new = reference_state(tmp_path / "src"), reference_state(tmp_path / "out")
    for bias, stacks in (("global_relative_attention_bias", 1), ("relative_attention_bias", 2)):
        name = f"encoder.block.0.layer.0.TransientGlobalSelfAttention.{bias}.weight"
        assert_bitwise_equal(new[name], old[name], name)
        assert sum(n.endswith(f".{bias}.weight") for n in new) == stacks  # block 0s only
