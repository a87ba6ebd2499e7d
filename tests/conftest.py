"""Fixtures: tiny real models built from configs with transformers, saved in every layout."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# deepspeed (the test extra) logs "Setting accelerator to CPU" on stdout whenever transformers
# imports it (save_pretrained does) and no accelerator was chosen: every test process and its
# children choose the CPU, so that no output depends on which test ran first
os.environ.setdefault("DS_ACCELERATOR", "cpu")

SHARED = Path(__file__).resolve().parents[2] / "shared"
REAL = Path(os.environ.get("CKPTSURGEON_SHARED", SHARED)) / "real-checkpoints"

LAYOUTS = ["safetensors", "safetensors-sharded", "bin", "bin-legacy", "bin-sharded", "pt-wrapped"]
FAMILIES = ["bert", "bert-seqcls", "roberta", "distilbert", "electra"]


def _config_and_class(family: str) -> tuple[Any, Any]:
    import transformers as tf

    common = dict(
        vocab_size=99,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    if family == "bert":
        return tf.BertConfig(num_hidden_layers=4, **common), tf.BertForMaskedLM
    if family == "bert-seqcls":
        return tf.BertConfig(num_hidden_layers=3, num_labels=3, **common), (
            tf.BertForSequenceClassification
        )
    if family == "roberta":
        cfg = tf.RobertaConfig(num_hidden_layers=3, pad_token_id=1, **common)
        cfg.max_position_embeddings = 66
        return cfg, tf.RobertaForMaskedLM
    if family == "distilbert":
        cfg = tf.DistilBertConfig(
            vocab_size=99, dim=32, n_layers=3, n_heads=4, hidden_dim=37, max_position_embeddings=64
        )
        return cfg, tf.DistilBertForMaskedLM
    if family == "electra":
        cfg = tf.ElectraConfig(num_hidden_layers=3, embedding_size=16, **common)
        return cfg, tf.ElectraForMaskedLM
    raise ValueError(family)


def model_class(family: str) -> Any:
    return _config_and_class(family)[1]


def build_model(family: str, seed: int = 0) -> Any:
    import torch

    torch.manual_seed(seed)
    cfg, cls = _config_and_class(family)
    model = cls(cfg)
    model.eval()
    # make LayerNorm and biases non-trivial so that re-initialisation is visible
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def save_layout(model: Any, layout: str, out: Path) -> Path:
    """Save ``model`` in one layout; returns the SRC path to give ckptsurgeon."""
    import torch

    out.mkdir(parents=True)
    model.config.save_pretrained(out)
    if layout == "safetensors":
        model.save_pretrained(out)
    elif layout == "safetensors-sharded":
        model.save_pretrained(out, max_shard_size="20KB")
        assert (out / "model.safetensors.index.json").exists()
    elif layout == "bin":
        torch.save(model.state_dict(), out / "pytorch_model.bin")
    elif layout == "bin-legacy":
        torch.save(
            model.state_dict(), out / "pytorch_model.bin", _use_new_zipfile_serialization=False
        )
    elif layout == "bin-sharded":
        # like save_pretrained: tied aliases (shared storage) are written once
        state, seen = {}, set()
        for name, t in model.state_dict().items():
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
            if key not in seen:
                seen.add(key)
                state[name] = t
        names = list(state)
        half = len(names) // 2
        parts = [names[:half], names[half:]]
        weight_map = {}
        for i, part in enumerate(parts, 1):
            fname = f"pytorch_model-{i:05d}-of-00002.bin"
            torch.save({n: state[n] for n in part}, out / fname)
            weight_map.update({n: fname for n in part})
        total = sum(t.numel() * t.element_size() for t in state.values())
        (out / "pytorch_model.bin.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
        )
    elif layout == "pt-wrapped":
        torch.save({"state_dict": model.state_dict(), "epoch": 3}, out / "checkpoint.pt")
    else:
        raise ValueError(layout)
    (out / "tokenizer_config.json").write_text('{"model_max_length": 64}\n')
    (out / "1_Pooling").mkdir()
    (out / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}\n')
    return out


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Path]:
    """``model_store(family, layout)`` -> a read-only checkpoint path, built once per session."""
    base = tmp_path_factory.mktemp("models")
    cache: dict[tuple[str, str], Path] = {}
    models: dict[str, Any] = {}

    def get(family: str, layout: str = "safetensors") -> Path:
        key = (family, layout)
        if key not in cache:
            if family not in models:
                models[family] = build_model(family)
            cache[key] = save_layout(models[family], layout, base / f"{family}-{layout}")
        return cache[key]

    return get


@pytest.fixture
def src_copy(model_store: Callable[[str, str], Path], tmp_path: Path) -> Callable[..., Path]:
    """A private copy of a stored checkpoint, for tests that modify or corrupt files."""

    def make(family: str = "bert", layout: str = "safetensors") -> Path:
        dst = tmp_path / f"copy-{family}-{layout}"
        shutil.copytree(model_store(family, layout), dst)
        return dst

    return make


@pytest.fixture
def ddp_src(model_store: Callable[[str, str], Path], tmp_path: Path) -> Path:
    """The tiny BERT as a DDP-wrapped run saves it: a .bin whose every name starts 'module.'."""
    import torch

    base = model_store("bert", "bin")
    src = tmp_path / "ddp"
    src.mkdir()
    shutil.copyfile(base / "config.json", src / "config.json")
    state = torch.load(base / "pytorch_model.bin", weights_only=True)
    torch.save({f"module.{k}": v for k, v in state.items()}, src / "pytorch_model.bin")
    return src


def real_checkpoints() -> list[Path]:
    if not REAL.is_dir():
        return []
    return sorted(p for p in REAL.iterdir() if p.is_dir())


def load_model(path: Path, family: str) -> tuple[Any, dict[str, Any]]:
    """Load with stock from_pretrained and return (model, loading_info)."""
    cls = model_class(family)
    model, info = cls.from_pretrained(str(path), output_loading_info=True)
    # v5 returns sets, v4 lists: normalise to sorted lists
    return model, {k: sorted(v) if isinstance(v, set | list) else v for k, v in info.items()}


def reference_state(path: Path) -> dict[str, Any]:
    """Every tensor of a checkpoint as torch tensors, read with torch/safetensors directly."""
    import torch
    from safetensors.torch import load_file

    p = Path(path)
    if p.is_dir():
        if (p / "model.safetensors").exists():
            return dict(load_file(str(p / "model.safetensors")))
        idx = p / "model.safetensors.index.json"
        if idx.exists():
            out: dict[str, Any] = {}
            for shard in sorted(set(json.loads(idx.read_text())["weight_map"].values())):
                out.update(load_file(str(p / shard)))
            return out
        bidx = p / "pytorch_model.bin.index.json"
        if bidx.exists():
            out = {}
            for shard in sorted(set(json.loads(bidx.read_text())["weight_map"].values())):
                out.update(torch.load(p / shard, weights_only=True))
            return out
        files = [f for f in p.iterdir() if f.suffix in (".bin", ".pt")]
        assert len(files) == 1, files
        p = files[0]
    if p.suffix == ".safetensors":
        return dict(load_file(str(p)))
    obj = torch.load(p, weights_only=True)
    return obj.get("state_dict", obj)


def assert_bitwise_equal(a: Any, b: Any, name: str = "") -> None:
    import torch

    assert a.dtype == b.dtype, name
    assert tuple(a.shape) == tuple(b.shape), name
    assert torch.equal(
        a.reshape(-1).contiguous().view(torch.uint8), b.reshape(-1).contiguous().view(torch.uint8)
    ), name


def peak_rss_mib(argv: list[str]) -> tuple[int, float]:
    """Run a command; return its exit code and peak RSS in MiB (measured by a small wrapper
    process, so this test process's own size does not count)."""
    import subprocess
    import sys

    code = (
        "import resource, subprocess, sys\n"
        "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
        "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True, check=True
    )
    rc, rss = out.stdout.split()
    return int(rc), float(rss)


def tiny_clip(text_layers: int = 2, vision_layers: int = 1, **text: Any) -> Any:
    """A tiny CLIPModel (two towers: two layer stacks, a text_config.vocab_size of 99)."""
    import transformers as tf

    text_config = {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": text_layers,
        "num_attention_heads": 4,
        "vocab_size": 99,
        "max_position_embeddings": 16,
        **text,
    }
    vision_config = {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": vision_layers,
        "num_attention_heads": 4,
        "image_size": 8,
        "patch_size": 4,
    }
    return tf.CLIPModel(
        tf.CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=16)
    )  # fmt: skip


def tiny_modernbert(layers: int = 3) -> Any:
    """A tiny ModernBertForMaskedLM (its layer 0 has no attn_norm; its head bias decoder.bias)."""
    import transformers as tf

    cfg = tf.ModernBertConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=layers, num_attention_heads=4,
        vocab_size=99, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1,
        sep_token_id=2,
    )  # fmt: skip
    return tf.ModernBertForMaskedLM(cfg)


def save_models(base: Path, models: dict[str, Any]) -> dict[str, tuple[Path, Any]]:
    """``save_pretrained`` each model under ``base/name``: ``{name: (path, class)}``."""
    out = {}
    for name, model in models.items():
        model.save_pretrained(base / name)
        out[name] = (base / name, type(model))
    return out


@pytest.fixture(scope="session")
def training(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Training checkpoints written by DCP, FSDP2, DeepSpeed ZeRO and Lightning (built once per
    test session; see training_checkpoints.py). Set CKPTSURGEON_TRAINING_CACHE to reuse a build
    across sessions while developing."""
    pytest.importorskip("deepspeed", reason="the test extra installs deepspeed")
    pytest.importorskip("lightning", reason="the test extra installs lightning")
    from training_checkpoints import build

    cache = os.environ.get("CKPTSURGEON_TRAINING_CACHE")
    root = Path(cache) if cache else tmp_path_factory.mktemp("training")
    return build(root)
