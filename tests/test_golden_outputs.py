"""Output bytes do not change when the code is reorganised: a convert, a reinit and a recipe of
a synthetic BERT (numpy-made, so the same on every transformers and torch version) must write
files whose sha256 were recorded from the code before the move. A change that alters output
bytes on purpose updates these hashes in the same commit and says why."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from ckptsurgeon import apply, convert, reinit


def _synthetic_bert(path: Path) -> Path:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(12345)
    h, inter, vocab, layers = 32, 37, 99, 3
    shapes: dict[str, tuple[int, ...]] = {
        "bert.embeddings.word_embeddings.weight": (vocab, h),
        "bert.embeddings.position_embeddings.weight": (64, h),
        "bert.embeddings.token_type_embeddings.weight": (2, h),
        "bert.embeddings.LayerNorm.weight": (h,),
        "bert.embeddings.LayerNorm.bias": (h,),
        "bert.pooler.dense.weight": (h, h),
        "bert.pooler.dense.bias": (h,),
        "cls.predictions.bias": (vocab,),
        "cls.predictions.transform.dense.weight": (h, h),
        "cls.predictions.transform.dense.bias": (h,),
        "cls.predictions.transform.LayerNorm.weight": (h,),
        "cls.predictions.transform.LayerNorm.bias": (h,),
    }
    for i in range(layers):
        p = f"bert.encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense"):  # fmt: skip
            shapes[p + name + ".weight"], shapes[p + name + ".bias"] = (h, h), (h,)
        shapes[p + "attention.output.LayerNorm.weight"] = (h,)
        shapes[p + "attention.output.LayerNorm.bias"] = (h,)
        shapes[p + "intermediate.dense.weight"], shapes[p + "intermediate.dense.bias"] = (inter, h), (inter,)  # fmt: skip
        shapes[p + "output.dense.weight"], shapes[p + "output.dense.bias"] = (h, inter), (h,)
        shapes[p + "output.LayerNorm.weight"], shapes[p + "output.LayerNorm.bias"] = (h,), (h,)
    tensors = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    path.mkdir()
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["BertForMaskedLM"], "model_type": "bert", "hidden_size": h,
        "intermediate_size": inter, "num_attention_heads": 4, "num_hidden_layers": layers,
        "vocab_size": vocab, "max_position_embeddings": 64, "type_vocab_size": 2,
        "pad_token_id": 0, "initializer_range": 0.02, "layer_norm_eps": 1e-12,
    }  # fmt: skip
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return path


def _hashes(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16]
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


RECIPE = [
    {"op": "drop", "patterns": ["cls.*"]},
    {"op": "reinit", "top_layers": 1, "pooler": True, "seed": 7},
    {"op": "cast", "dtype": "bf16"},
    {"op": "config", "set": {"architectures": ["BertModel"]}},
]

# recorded from the code of issue 18 (before issue 19's reorganisation); issue 22 changed on
# purpose the files that copy tensors unchanged: headers padded so that copied tensors keep their
# source offsets modulo 4096 (clones), and re-initialised tensors kept in their source places
GOLDEN: dict[str, dict[str, str]] = {
    "convert": {
        "config.json": "83e35df4de71c158",
        "model-00001-of-00007.safetensors": "db5c5b179b3050f5",
        "model-00002-of-00007.safetensors": "5a26fbf8abadf14a",
        "model-00003-of-00007.safetensors": "ef83d2593037d34c",
        "model-00004-of-00007.safetensors": "0b480a3024eb29bb",
        "model-00005-of-00007.safetensors": "ab916b072d963a70",
        "model-00006-of-00007.safetensors": "f963121882c619c8",
        "model-00007-of-00007.safetensors": "92b8935141567fc2",
        "model.safetensors.index.json": "e8a67ad32976f606",
    },
    "reinit": {"config.json": "83e35df4de71c158", "model.safetensors": "95fa3522c9a9c6ec"},
    "recipe": {"config.json": "6c53f66564339562", "model.safetensors": "8a3419a0a0163dc9"},
}


@pytest.mark.parametrize("job", ["convert", "reinit", "recipe"])
def test_output_bytes_are_the_recorded_ones(tmp_path, job):
    src = _synthetic_bert(tmp_path / "src")
    out = tmp_path / job
    if job == "convert":
        convert(src, out, max_shard_size="20KB")
    elif job == "reinit":
        reinit(src, out, top_layers=2, pooler=True, seed=3, rules="bert")
    else:
        apply(RECIPE, src, out)
    assert _hashes(out) == GOLDEN[job]
