"""cast: bit for bit as torch's .to() on the CPU, NaN, Inf, subnormals and overflow included."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import assert_bitwise_equal, reference_state
from test_hardening import assert_clean_error, cli

from ckptsurgeon import cast, open_checkpoint, reinit
from ckptsurgeon.dtypes import cast_bytes
from ckptsurgeon.formats.safetensors import build_header

F32_SPECIALS = [
    0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FBFFFFF, 0x7FFFFFFF, 0x7F812345,
    0x7F800000, 0xFF800000, 0x00000001, 0x80000001, 0x007FFFFF, 0x00008000, 0x00018000,
    0x7F7FFFFF, 0x477FF000, 0x477FEFFF, 0x477FF001, 0x3F808000, 0x3F818000, 0x33000000,
    0x33000001, 0x337FFFFF, 0x387FC000, 0x80000000, 0x00000000,
]  # fmt: skip


def _patterns(src: str) -> np.ndarray:
    """Every bit pattern of a 16-bit dtype; specials and random patterns for wider ones."""
    rng = np.random.default_rng(0)
    if src in ("F16", "BF16"):
        return np.arange(1 << 16, dtype=np.uint32).astype("<u2")
    if src == "F32":
        bits = rng.integers(0, 1 << 32, size=200_000, dtype=np.uint32)
        normal = rng.normal(size=100_000).astype(np.float32) * np.float32(70000)
        return np.concatenate(
            [np.array(F32_SPECIALS, dtype=np.uint32), bits, normal.view(np.uint32)]
        )
    bits = rng.integers(0, 1 << 64, size=200_000, dtype=np.uint64)
    return np.concatenate(
        [
            bits,
            np.array([0x7FF0000000000001, 0xFFF8000000000000, 0x36A0000000000000], dtype=np.uint64),
        ]
    )


def _torch(src: str):
    import torch

    return {
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "F32": torch.float32,
        "F64": torch.float64,
    }[src]


@pytest.mark.parametrize(
    ("src", "dst"),
    [(s, d) for s in ("F32", "F16", "BF16", "F64") for d in ("BF16", "F16", "F32") if s != d],
)
def test_cast_kernel_is_bit_identical_to_torch(src, dst):
    import torch

    raw = _patterns(src)
    want = torch.from_numpy(
        raw.view(
            np.int16 if raw.itemsize == 2 else np.int32 if raw.itemsize == 4 else np.int64
        ).copy()
    )
    want = want.view(_torch(src)).to(_torch(dst)).view(torch.uint8).numpy().tobytes()
    # in odd-sized chunks, as the executor streams them
    step = 4099 * raw.itemsize
    got = b"".join(
        bytes(cast_bytes(raw.tobytes()[i : i + step], src, dst)[0])
        for i in range(0, raw.nbytes, step)
    )
    assert got == want


def _write(path, tensors: dict[str, tuple[str, np.ndarray]]) -> None:
    specs = [(n, d, a.shape, a.nbytes) for n, (d, a) in tensors.items()]
    header, _ = build_header(specs, {"format": "pt"})
    path.mkdir()
    (path / "model.safetensors").write_bytes(
        header + b"".join(a.tobytes() for _, a in tensors.values())
    )
    (path / "config.json").write_text(
        json.dumps({"model_type": "bert", "torch_dtype": "float32"}, indent=2) + "\n"
    )


def test_cast_command_counts_lost_values_and_skips_integers(tmp_path):
    src = tmp_path / "src"
    big = np.array([1.0, 1e6, -1e6, 1e-10, 0.0, np.inf, np.nan], dtype=np.float32)
    _write(src, {"w": ("F32", big), "ids": ("I64", np.arange(3, dtype=np.int64))})
    code, out, err, _ = cli("cast", src, tmp_path / "out", "--dtype", "fp16")
    assert code == 0, err
    assert "skipped ids: I64 (integer) tensor, never cast" in out
    assert (
        "Warning: cast: 2 values too large for the new dtype overflowed to Inf, in 1 tensors: w (2)"
        in err
    )
    assert (
        "Warning: cast: 1 nonzero values too small for the new dtype flushed to zero, in 1 tensors: w (1)"
        in err
    )
    ckpt = open_checkpoint(tmp_path / "out")
    assert {t.name: t.dtype for t in ckpt.tensors} == {"w": "F16", "ids": "I64"}
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config == {"model_type": "bert", "torch_dtype": "float16", "dtype": "float16"}
    assert list(config) == ["model_type", "torch_dtype", "dtype"]  # key order kept
    # every floating tensor already fp16: nothing to do
    code, _, err, _ = cli("cast", tmp_path / "out", tmp_path / "again", "--dtype", "fp16")
    assert_clean_error(code, err, "every selected floating tensor is already F16; nothing to cast")


def test_partial_cast_leaves_config_dtype_with_a_warning(model_store, tmp_path):
    res = cast(model_store("bert"), tmp_path / "out", "bf16", patterns="bert.encoder.*")
    assert res.plan.config_edits == ()
    assert any("config.json's dtype is left as" in w for w in res.plan.warnings)
    state = reference_state(tmp_path / "out")
    assert state["bert.encoder.layer.0.output.dense.weight"].dtype.is_floating_point
    assert str(state["bert.embeddings.word_embeddings.weight"].dtype) == "torch.float32"
    assert str(state["bert.encoder.layer.0.output.dense.weight"].dtype) == "torch.bfloat16"


def test_cast_streams_a_large_tensor_in_bounded_memory(tmp_path):
    from conftest import peak_rss_mib

    src = tmp_path / "src"
    src.mkdir()
    n = 1 << 28  # 1 GiB of F32, sparse on disk
    header, _ = build_header([("big.weight", "F32", (n,), 4 * n)], {"format": "pt"})
    with open(src / "model.safetensors", "wb") as fh:
        fh.write(header)
        fh.truncate(len(header) + 4 * n)
    import sys

    code, rss = peak_rss_mib(
        [sys.executable, "-m", "ckptsurgeon", "cast", src, tmp_path / "out", "--dtype", "bf16"]
    )
    assert code == 0
    assert rss < 250, rss
    assert open_checkpoint(tmp_path / "out").tensors[0].nbytes == 2 * n


@pytest.mark.roundtrip
@pytest.mark.parametrize(
    ("family", "dtype", "torch_name"),
    [
        ("bert", "bf16", "bfloat16"),
        ("roberta", "fp16", "float16"),
        ("bert-seqcls", "bf16", "bfloat16"),
    ],
)
def test_cast_output_loads_in_the_cast_dtype(model_store, tmp_path, family, dtype, torch_name):
    import torch
    import transformers
    from conftest import model_class

    src = model_store(family, "bin")
    out = tmp_path / "out"
    cast(src, out, dtype)
    kwargs = {} if transformers.__version__.startswith("5.") else {"torch_dtype": "auto"}
    model, info = model_class(family).from_pretrained(str(out), output_loading_info=True, **kwargs)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.dtype == getattr(torch, torch_name)
    source = reference_state(src)
    state = model.state_dict()
    for name, tensor in reference_state(out).items():
        assert_bitwise_equal(tensor, source[name].to(getattr(torch, torch_name)), name)
        assert_bitwise_equal(state[name], tensor, name)


def test_diff_ignore_dtype_passes_a_correct_cast(model_store, tmp_path):
    src = model_store("bert")
    cast(src, tmp_path / "bf16", "bf16")
    code, out, _, _ = cli("diff", src, tmp_path / "bf16")
    assert code == 1 and "dtype_mismatch: 74" in out
    code, out, err, _ = cli("diff", src, tmp_path / "bf16", "--ignore-dtype", "--atol", "1e-2")
    assert code == 0, out + err
    summary = [ln for ln in out.splitlines() if ln.startswith(("identical", "close", "changed"))]
    assert summary and all(not ln.startswith("changed") for ln in summary)
    # a value really changed is still caught across dtypes
    reinit(tmp_path / "bf16", tmp_path / "re", "bert.encoder.layer.0.output.dense.weight")
    code, out, _, _ = cli(
        "diff", src, tmp_path / "re", "--ignore-dtype", "--atol", "1e-2", "--json"
    )
    assert code == 1
    rows = {t["name"]: t["status"] for t in json.loads(out)["tensors"]}
    assert rows["bert.encoder.layer.0.output.dense.weight"] == "changed"
    # exactly representable values are identical by value
    cast(tmp_path / "bf16", tmp_path / "f32", "fp32")
    code, out, _, _ = cli("diff", tmp_path / "bf16", tmp_path / "f32", "--ignore-dtype", "--json")
    assert code == 0 and set(json.loads(out)["summary"]) == {"identical"}


@pytest.mark.parametrize(
    ("src", "dst"), [("F32", "bf16"), ("F32", "fp16"), ("BF16", "fp32"), ("F16", "bf16")]
)
def test_cast_command_output_equals_torch_to_bit_for_bit(tmp_path, src, dst):
    """Through files and the streaming executor (several chunks), not just the kernel."""
    import torch

    raw = _patterns(src)
    if src == "F32":
        raw = np.concatenate([raw] * 12)  # > 8 MiB: several chunks, cast on several threads
    ints = {2: np.int16, 4: np.int32}[raw.itemsize]
    _write(tmp_path / "src", {"t": (src, raw)})
    res = cast(tmp_path / "src", tmp_path / "out", dst)
    target = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dst]
    want = torch.from_numpy(raw.view(ints).copy()).view(_torch(src)).to(target)
    got = reference_state(tmp_path / "out")["t"]
    assert_bitwise_equal(got, want, f"{src}->{dst}")
    if src == "F32":
        assert any("overflowed to Inf" in n for n in res.notes)
