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
    assert result.written is not None and result.written.files == ("model.safetensors",)

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
