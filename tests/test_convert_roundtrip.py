"""convert: every layout of every family -> safetensors that stock from_pretrained loads, bit-exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import FAMILIES, LAYOUTS, assert_bitwise_equal, load_model, reference_state

from ckptsurgeon import convert, open_checkpoint

pytestmark = pytest.mark.roundtrip


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_convert_loads_and_matches_bit_for_bit(model_store, tmp_path, family, layout):
    src = model_store(family, layout)
    dest = tmp_path / "out"
    result = convert(src, dest)
    assert (dest / "config.json").read_bytes() == (src / "config.json").read_bytes()
    assert (dest / "1_Pooling" / "config.json").exists()
    assert (dest / "tokenizer_config.json").exists()
    assert not list(dest.glob("*.bin")) and not list(dest.glob("*.pt"))
    assert result.written is not None
    if layout == "safetensors-sharded":  # the default keeps a sharded safetensors SRC's files
        index = json.loads((src / "model.safetensors.index.json").read_text())
        shards = sorted(set(index["weight_map"].values()))
        assert result.written.files == (*shards, "model.safetensors.index.json")
    else:
        assert result.written.files == ("model.safetensors",)

    source = reference_state(src)
    written = reference_state(dest)
    # every written tensor equals its source bit for bit; only tied aliases are folded
    for name, tensor in written.items():
        assert_bitwise_equal(tensor, source[name], name)
    assert set(source) - set(written) == set(result.plan.aliases)

    model, info = load_model(dest, family)
    assert info["missing_keys"] == [] or set(info["missing_keys"]) <= set(result.plan.aliases)
    assert info["unexpected_keys"] == []
    state = model.state_dict()
    for name, tensor in source.items():
        assert_bitwise_equal(state[name], tensor, name)


def test_aliases_recorded_and_canonical_written(model_store, tmp_path):
    src = model_store("bert", "bin")
    dest = tmp_path / "out"
    convert(src, dest)
    ckpt = open_checkpoint(dest)
    assert "bert.embeddings.word_embeddings.weight" in ckpt.names
    assert "cls.predictions.decoder.weight" not in ckpt.names
    record = json.loads(ckpt.metadata["ckptsurgeon"])
    assert ckpt.metadata["format"] == "pt"
    assert record["operation"] == "convert"
    assert record["tied_aliases_dropped"] == {
        "cls.predictions.decoder.bias": "cls.predictions.bias",
        "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
    }


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_sharded_output_loads(model_store, tmp_path, family):
    src = model_store(family, "bin")
    dest = tmp_path / "out"
    result = convert(src, dest, max_shard_size=30_000)
    assert result.written is not None
    files = result.written.files
    assert files[-1] == "model.safetensors.index.json"
    n = len(files) - 1
    assert n > 1
    assert list(files[:-1]) == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    index = json.loads((dest / "model.safetensors.index.json").read_text())
    assert set(index) == {"metadata", "weight_map"}
    assert index["metadata"]["total_size"] == result.written.total_bytes
    for shard in files[:-1]:
        size = sum(t.nbytes for t in open_checkpoint(dest / shard).tensors)
        assert size <= 30_000 or len(open_checkpoint(dest / shard).tensors) == 1
    model, info = load_model(dest, family)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    source = reference_state(src)
    state = model.state_dict()
    for name, tensor in source.items():
        assert_bitwise_equal(state[name], tensor, name)


def test_single_file_destination(model_store, tmp_path):
    src = model_store("bert", "safetensors-sharded")
    dest = tmp_path / "weights.safetensors"
    convert(src, dest)
    assert dest.is_file()
    written = reference_state(dest)
    source = reference_state(src)
    assert written.keys() == source.keys()
    for name in source:
        assert_bitwise_equal(written[name], source[name], name)


def test_output_is_byte_deterministic(model_store, tmp_path):
    src = model_store("bert", "bin")
    convert(src, tmp_path / "a", max_shard_size=30_000)
    convert(src, tmp_path / "b", max_shard_size=30_000)
    files_a = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files_a == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in files_a:
        path_a = Path(tmp_path / "a" / name)
        if path_a.is_file():
            assert path_a.read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_strip_ddp_and_compile_prefixes_then_load(model_store, tmp_path):
    """A DDP / torch.compile state dict: transformers does not strip 'module.'; --strip-prefix does."""
    import torch
    from click.testing import CliRunner

    from ckptsurgeon.cli import main

    src_dir = model_store("bert", "bin")
    state = reference_state(src_dir)
    wrapped = tmp_path / "ddp"
    wrapped.mkdir()
    (wrapped / "config.json").write_bytes((src_dir / "config.json").read_bytes())
    torch.save(
        {"model": {f"module._orig_mod.{k}": v for k, v in state.items()}, "step": 7},
        wrapped / "checkpoint.pt",
    )
    r = CliRunner().invoke(
        main,
        [
            "convert",
            str(wrapped),
            str(tmp_path / "out"),
            "--strip-prefix",
            "module._orig_mod.",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.stderr
    out = reference_state(tmp_path / "out")
    assert set(out) == set(state) - {
        "cls.predictions.decoder.weight",
        "cls.predictions.decoder.bias",
    }
    meta = json.loads(open_checkpoint(tmp_path / "out").metadata["ckptsurgeon"])
    assert meta["arguments"]["strip_prefix"] == ["module._orig_mod."]
    assert (
        meta["tied_aliases_dropped"]["cls.predictions.decoder.weight"]
        == "bert.embeddings.word_embeddings.weight"
    )
    model, info = load_model(tmp_path / "out", "bert")
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    for name, tensor in state.items():
        assert_bitwise_equal(model.state_dict()[name], tensor, name)

    # selection works on the stripped names; reinit values depend on them too
    from ckptsurgeon import drop, reinit

    res = drop(wrapped, tmp_path / "d", ["cls.*"], strip_prefix=["module._orig_mod."])
    assert res.plan.count("drop") == 5
    q = "bert.encoder.layer.3.attention.self.query.weight"
    res = reinit(wrapped, tmp_path / "r1", [q], strip_prefix=["module._orig_mod."])
    assert [t.name for t in res.plan.changed()] == [q]
    reinit(tmp_path / "out", tmp_path / "r2", [q])
    r1, r2 = reference_state(tmp_path / "r1"), reference_state(tmp_path / "r2")
    assert torch.equal(r1[q], r2[q]) and not torch.equal(r1[q], state[q])


def test_strip_prefix_errors(model_store, tmp_path):
    from ckptsurgeon import SelectionError

    with pytest.raises(SelectionError, match=r"no tensor name starts with 'module\.'"):
        convert(model_store("bert"), tmp_path / "o", strip_prefix=["module."])
    assert not (tmp_path / "o").exists()
