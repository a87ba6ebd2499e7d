"""``check``: each check fails on a file made to break it, passes on every fixture and real
checkpoint, and never imports torch."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import LAYOUTS, real_checkpoints

import ckptsurgeon
from ckptsurgeon.cli import main


def run(*args: object) -> tuple[int, str]:
    r = CliRunner().invoke(main, ["check", *map(str, args)])
    return r.exit_code, r.output


def fails(path: Path, *needles: str, extra: tuple[str, ...] = ()) -> str:
    code, out = run(path, *extra)
    assert code == 1, out
    lines = [line for line in out.splitlines() if line.startswith("FAIL")]
    for needle in needles:
        assert any(needle in line for line in lines), (needle, out)
    return out


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_fixture_passes(model_store, layout):
    code, out = run(model_store("bert", layout))
    assert code == 0, out
    assert out.splitlines()[-1].endswith(": all checks pass")
    assert "ok    values:" in out


@pytest.mark.parametrize("path", real_checkpoints(), ids=lambda p: p.name)
def test_every_real_checkpoint_passes(path):
    code, out = run(path)
    assert code == 0, out


def _save(path: Path, tensors: dict[str, np.ndarray], config: dict | None = None) -> Path:
    from safetensors.numpy import save_file

    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    if config is not None:
        (path / "config.json").write_text(json.dumps(config))
    return path


def test_a_truncated_shard(src_copy):
    src = src_copy("bert", "safetensors-sharded")
    shard = sorted(src.glob("model-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-10])
    fails(src, f"{shard.name}: data is truncated")


def test_a_hole_between_tensors(tmp_path):
    src = _save(tmp_path / "m", {"a": np.ones(4, np.float32), "b": np.ones(4, np.float32)})
    f = src / "model.safetensors"
    raw = f.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    header["b"]["data_offsets"] = [20, 36]  # 4 bytes of nothing after a
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    f.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :] + b"\0" * 4)
    fails(src, "model.safetensors: tensor 'b' at offset 20 leaves a gap before it")


def test_a_shard_missing_from_the_index_and_a_stray_file(src_copy):
    src = src_copy("bert", "safetensors-sharded")
    shards = sorted(src.glob("model-*.safetensors"))
    shards[0].unlink()
    fails(src, f"shard {shards[0].name} listed in model.safetensors.index.json is missing")
    src2 = src_copy("bert", "safetensors")
    shutil.copytree(src, src2.parent / "two")
    (src2.parent / "two" / "extra.safetensors").write_bytes(shards[1].read_bytes())
    fails(src2.parent / "two", "weight files beside the index that it does not list: extra")


def test_an_index_with_a_wrong_total_size(src_copy):
    src = src_copy("bert", "safetensors-sharded")
    index = src / "model.safetensors.index.json"
    obj = json.loads(index.read_text())
    obj["metadata"]["total_size"] += 4
    index.write_text(json.dumps(obj))
    fails(src, "model.safetensors.index.json: total_size")


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_nan_and_inf_fail_naming_the_tensor(tmp_path, dtype):
    import torch
    from safetensors.torch import save_file

    w = torch.full((64, 64), 0.5)
    w[3, 4] = float("nan")
    w[5, :3] = float("inf")
    w[6, 0] = float("-inf")
    tensors = {"layer.weight": w.to(getattr(torch, dtype)), "ok.weight": torch.ones(2, 2)}
    (tmp_path / "m").mkdir()
    save_file(tensors, str(tmp_path / "m" / "model.safetensors"))
    out = fails(tmp_path / "m", "layer.weight: 1 NaN, 4 Inf")
    assert "ok.weight" not in out


def test_a_zero_matrix_is_a_warning(tmp_path):
    src = _save(
        tmp_path / "m", {"dense.weight": np.zeros((8, 8), np.float32), "b": np.zeros(8, np.float32)}
    )
    code, out = run(src)
    assert code == 0, out
    assert "warn  values: dense.weight: every value is zero" in out
    assert "values: b:" not in out  # a zero bias is normal


def _bert_config(**changes: object) -> dict:
    config = {"model_type": "bert", "vocab_size": 10, "hidden_size": 4, "num_hidden_layers": 2,
              "architectures": ["BertForMaskedLM"]}  # fmt: skip
    return {**config, **changes}


def _bert_tensors(vocab: int = 10, layers: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {"bert.embeddings.word_embeddings.weight": rng.standard_normal((vocab, 4), np.float32)}
    for i in range(layers):
        out[f"bert.encoder.layer.{i}.output.dense.weight"] = rng.standard_normal((4, 4), np.float32)
    return out


def test_config_vocab_size_layers_and_hidden_size_disagreeing(tmp_path):
    ok = _save(tmp_path / "ok", _bert_tensors(), _bert_config())
    assert run(ok)[0] == 0
    fails(_save(tmp_path / "v", _bert_tensors(), _bert_config(vocab_size=12)),
          "vocab_size is 12 but bert.embeddings.word_embeddings.weight has 10 rows")  # fmt: skip
    fails(_save(tmp_path / "l", _bert_tensors(), _bert_config(num_hidden_layers=3)),
          "config.json says 3 layers; bert.encoder.layer holds 2")  # fmt: skip
    fails(_save(tmp_path / "h", _bert_tensors(), _bert_config(hidden_size=8)),
          "hidden_size is 8 but bert.embeddings.word_embeddings.weight is 4 wide")  # fmt: skip


def test_a_tied_head_that_differs_from_the_embedding(tmp_path):
    tensors = _bert_tensors()
    tensors["cls.predictions.decoder.weight"] = (
        tensors["bert.embeddings.word_embeddings.weight"] + 1
    )
    fails(_save(tmp_path / "t", tensors, _bert_config()),
          "tie_word_embeddings is true but cls.predictions.decoder.weight differs")  # fmt: skip
    tensors["cls.predictions.decoder.weight"] = tensors["bert.embeddings.word_embeddings.weight"]
    assert run(_save(tmp_path / "same", tensors, _bert_config()))[0] == 0
    untied = _save(tmp_path / "u", _bert_tensors(), _bert_config(tie_word_embeddings=False))
    fails(untied, "tie_word_embeddings is false but no output head is stored")


def test_a_dtype_that_disagrees_is_a_warning(tmp_path):
    code, out = run(_save(tmp_path / "d", _bert_tensors(), _bert_config(dtype="bfloat16")))
    assert code == 0
    assert "warn  config: config.json's dtype is bfloat16; the weights are float32" in out


def test_manifest_written_then_verified_then_a_change_fails(src_copy, tmp_path):
    src = src_copy("bert", "safetensors-sharded")
    manifest = tmp_path / "manifest.json"
    code, out = run(src, "--write-manifest", manifest)
    assert code == 0, out
    table = json.loads(manifest.read_text())["files"]
    assert list(table) == sorted(table) and "config.json" in table
    for rel, entry in table.items():
        data = (src / rel).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    code, out = run(src, "--manifest", manifest)
    assert code == 0 and "ok    manifest: " in out, out
    config = src / "config.json"
    config.write_text(config.read_text().replace("{", "{ ", 1))
    fails(
        src,
        "config.json changed (size differs from the manifest)",
        extra=("--manifest", str(manifest)),
    )


def test_json_prints_every_check_and_the_api_returns_it(model_store):
    src = model_store("bert")
    r = CliRunner().invoke(main, ["check", str(src), "--json"])
    obj = json.loads(r.stdout)
    assert obj["ok"] is True and {c["check"] for c in obj["checks"]} == {
        "files",
        "values",
        "config",
    }
    result = ckptsurgeon.check(src)
    assert result.ok and result.to_json()["checks"] == obj["checks"]


def test_cannot_run_is_exit_2(tmp_path):
    code, out = run(tmp_path / "nothing-here")
    assert code == 2 and out.startswith("Error: ")


def test_check_never_imports_torch(model_store, tmp_path):
    code = (
        "import sys\n"
        "from ckptsurgeon.cli import main\n"
        "try:\n"
        f"    main(['check', {str(model_store('bert', 'safetensors-sharded'))!r}, '--write-manifest', "
        f"{str(tmp_path / 'm.json')!r}])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
        "print('torch-free')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip().endswith("torch-free"), r.stdout + r.stderr


def test_a_fifo_beside_the_weights_and_a_manifest_inside_src(src_copy):
    import os

    src = src_copy("bert", "safetensors")
    os.mkfifo(src / "pipe")  # never opened: a FIFO blocks whoever reads it
    manifest = src / "MANIFEST.json"
    code, out = run(src, "--write-manifest", manifest)
    assert code == 0, out
    listed = json.loads(manifest.read_text())["files"]
    assert "pipe" not in listed and "MANIFEST.json" not in listed
    code, out = run(src, "--manifest", manifest)
    assert code == 0 and "ok    manifest:" in out, out
