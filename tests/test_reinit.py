"""reinit: selection, BERT's rules, determinism, tied weights, errors; loads with from_pretrained."""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import LAYOUTS, assert_bitwise_equal, load_model, reference_state
from test_hardening import assert_clean_error, cli, leftovers

from ckptsurgeon import (
    InitRuleError,
    PatternError,
    SelectionError,
    open_checkpoint,
    reinit,
)
from ckptsurgeon.formats.safetensors import build_header
from ckptsurgeon.rules.bert import CHUNK_ELEMS, Rule, generate

TOP = {"bert": 2, "bert-seqcls": 2, "roberta": 2, "distilbert": 2, "electra": 2}
HAS_POOLER = {
    "bert": False,
    "bert-seqcls": True,
    "roberta": False,
    "distilbert": False,
    "electra": False,
}
STACK = {
    "bert": "bert.encoder.layer",
    "bert-seqcls": "bert.encoder.layer",
    "roberta": "roberta.encoder.layer",
    "distilbert": "distilbert.transformer.layer",
    "electra": "electra.encoder.layer",
}
N_LAYERS = {"bert": 4, "bert-seqcls": 3, "roberta": 3, "distilbert": 3, "electra": 3}


def check_rule(name: str, t: torch.Tensor, std: float = 0.02) -> None:
    """The value-level contract of each rule."""
    leaf = name.rsplit(".", 1)[-1]
    module = name.rsplit(".", 2)[-2]
    if re.search("layer_?norm", module, re.I):
        expected = 1.0 if leaf == "weight" else 0.0
        assert torch.all(t == expected), name
    elif leaf == "bias":
        assert torch.all(t == 0), name
    else:
        assert t.dim() == 2, name
        assert t.abs().max() < 8 * std, name
        assert t.float().std() == pytest.approx(std, rel=0.35), name


@pytest.mark.roundtrip
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("family", sorted(TOP))
def test_reinit_top_layers_loads_and_follows_rules(model_store, tmp_path, family, layout):
    src = model_store(family, layout)
    dest = tmp_path / "out"
    result = reinit(src, dest, top_layers=TOP[family], pooler=HAS_POOLER[family], seed=0)
    top = [f"{STACK[family]}.{i}." for i in range(N_LAYERS[family] - TOP[family], N_LAYERS[family])]

    def selected(n: str) -> bool:
        return any(n.startswith(p) for p in top) or (HAS_POOLER[family] and ".pooler.dense." in n)

    reinit_names = {t.name for t in result.plan.tensors if t.action == "reinit"}
    source = reference_state(src)
    expected = {n for n in source if selected(n)}
    assert reinit_names == expected
    written = reference_state(dest)
    for name, tensor in written.items():
        if name in reinit_names:
            check_rule(name, tensor)
            assert not torch.equal(tensor, source[name]) or "LayerNorm" in name, name
        else:
            assert_bitwise_equal(tensor, source[name], name)

    model, info = load_model(dest, family)
    assert info["missing_keys"] == [] or set(info["missing_keys"]) <= set(result.plan.aliases)
    assert info["unexpected_keys"] == []
    state = model.state_dict()
    for name in written:
        assert_bitwise_equal(state[name], written[name], name)


def test_padding_rows_and_embeddings(model_store, tmp_path):
    bert = reinit(model_store("bert"), tmp_path / "b", ["bert.embeddings.*"])
    out = reference_state(tmp_path / "b")
    word = out["bert.embeddings.word_embeddings.weight"]
    assert torch.all(word[0] == 0) and torch.all(word[1:] != 0)
    assert torch.all(out["bert.embeddings.position_embeddings.weight"][0] != 0)
    assert torch.all(out["bert.embeddings.token_type_embeddings.weight"][0] != 0)
    rules = {t.name: t.rule for t in bert.plan.tensors if t.action == "reinit"}
    assert rules["bert.embeddings.word_embeddings.weight"] == "normal(0, 0.02), row 0 zeroed"
    assert rules["bert.embeddings.LayerNorm.weight"] == "ones"

    reinit(model_store("roberta"), tmp_path / "r", ["roberta.embeddings.*"])
    out = reference_state(tmp_path / "r")
    for name in ("word_embeddings", "position_embeddings"):
        t = out[f"roberta.embeddings.{name}.weight"]
        assert torch.all(t[1] == 0) and torch.all(t[0] != 0), name
    assert torch.all(out["roberta.embeddings.token_type_embeddings.weight"][0] != 0)


def test_std_from_config_and_flag(src_copy, tmp_path):
    src = src_copy("bert")
    cfg = json.loads((src / "config.json").read_text())
    cfg["initializer_range"] = 0.05
    (src / "config.json").write_text(json.dumps(cfg))
    res = reinit(src, tmp_path / "a", ["bert.encoder.layer.0.intermediate.dense.weight"])
    assert res.plan.std == 0.05
    t = reference_state(tmp_path / "a")["bert.encoder.layer.0.intermediate.dense.weight"]
    assert t.std().item() == pytest.approx(0.05, rel=0.15)
    res = reinit(src, tmp_path / "b", ["bert.encoder.layer.0.intermediate.dense.weight"], std=0.5)
    assert res.plan.std == 0.5
    meta = json.loads(open_checkpoint(tmp_path / "b").metadata["ckptsurgeon"])
    assert meta["operation"] == "reinit" and meta["arguments"]["std"] == 0.5
    assert meta["arguments"]["seed"] == 0


def test_large_matrix_statistics():
    """Mean and std of a 4M-value draw lie within statistical tolerance of N(0, std)."""
    shape = (2048, 2048)
    raw = b"".join(bytes(c) for c in generate("w", "F32", shape, Rule("normal", 0.02), seed=3))
    t = torch.frombuffer(bytearray(raw), dtype=torch.float32)
    n = t.numel()
    assert abs(t.double().mean().item()) < 5 * 0.02 / math.sqrt(n)
    assert t.double().std().item() == pytest.approx(0.02, rel=5 * math.sqrt(2 / n))
    # tails of a normal: about 0.27% beyond 3 sigma
    beyond = (t.abs() > 0.06).double().mean().item()
    assert beyond == pytest.approx(0.0027, abs=0.0004)


@pytest.mark.parametrize("dtype", ["F16", "BF16", "F64"])
def test_low_precision_values_are_rounded_float32_draws(dtype):
    torch_dtype = {"F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}[dtype]
    shape = (300, 77)
    f32 = b"".join(bytes(c) for c in generate("x", "F32", shape, Rule("normal", 0.02), 5))
    low = b"".join(bytes(c) for c in generate("x", dtype, shape, Rule("normal", 0.02), 5))
    expected = torch.frombuffer(bytearray(f32), dtype=torch.float32).to(torch_dtype)
    got = torch.frombuffer(bytearray(low), dtype=torch_dtype)
    assert torch.equal(expected.view(torch.uint8), got.view(torch.uint8))


def test_values_independent_of_threads_and_chunking():
    numel = CHUNK_ELEMS * 2 + 123
    one = b"".join(
        bytes(c) for c in generate("big", "BF16", (numel, 1), Rule("normal", 0.02), 7, threads=1)
    )
    two = b"".join(
        bytes(c) for c in generate("big", "BF16", (numel, 1), Rule("normal", 0.02), 7, threads=2)
    )
    assert one == two and len(one) == numel * 2


def test_byte_identical_reruns_and_selection_independence(model_store, tmp_path):
    src = model_store("bert", "bin")
    q = "bert.encoder.layer.3.attention.self.query.weight"
    reinit(src, tmp_path / "a", top_layers=2, seed=11)
    reinit(src, tmp_path / "b", top_layers=2, seed=11)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (
        tmp_path / "b" / "model.safetensors"
    ).read_bytes()
    reinit(src, tmp_path / "c", [q], seed=11, max_shard_size=20_000)
    reinit(src, tmp_path / "d", [q], seed=12)
    a, c, d = (reference_state(tmp_path / x) for x in "acd")
    assert torch.equal(a[q], c[q])
    assert not torch.equal(a[q], d[q])


def test_integer_buffers_are_skipped(tmp_path):
    from safetensors.torch import save_file

    src = tmp_path / "src.safetensors"
    save_file(
        {
            "bert.embeddings.position_ids": torch.arange(8).reshape(1, 8),
            "bert.embeddings.LayerNorm.weight": torch.full((4,), 3.0),
        },
        str(src),
        metadata={"format": "pt"},
    )
    res = reinit(src, tmp_path / "out.safetensors", ["bert.embeddings.*"])
    assert [s.name for s in res.plan.skipped] == ["bert.embeddings.position_ids"]
    out = reference_state(tmp_path / "out.safetensors")
    assert torch.equal(out["bert.embeddings.position_ids"], torch.arange(8).reshape(1, 8))
    assert torch.all(out["bert.embeddings.LayerNorm.weight"] == 1)


def test_tied_alias_selection_resolves_to_canonical(model_store, tmp_path):
    src = model_store("bert", "bin")
    res = reinit(src, tmp_path / "out", ["cls.predictions.decoder.weight"])
    assert any(
        "re-initialising bert.embeddings.word_embeddings.weight" in w for w in res.plan.warnings
    )
    assert [t.name for t in res.plan.tensors if t.action == "reinit"] == [
        "bert.embeddings.word_embeddings.weight"
    ]
    model, info = load_model(tmp_path / "out", "bert")
    assert info["missing_keys"] == []
    emb = model.bert.embeddings.word_embeddings.weight
    assert torch.equal(model.cls.predictions.decoder.weight, emb)
    assert torch.all(emb[0] == 0)


def test_separately_stored_alias_follows_canonical(tmp_path, model_store):
    from safetensors.torch import save_file

    state = {k: v.clone() for k, v in reference_state(model_store("bert", "bin")).items()}
    src = tmp_path / "src"
    src.mkdir()
    save_file(state, str(src / "model.safetensors"), metadata={"format": "pt"})
    (src / "config.json").write_bytes((model_store("bert", "bin") / "config.json").read_bytes())
    reinit(src, tmp_path / "out", ["bert.embeddings.word_embeddings.weight"])
    out = reference_state(tmp_path / "out")
    assert torch.equal(
        out["cls.predictions.decoder.weight"], out["bert.embeddings.word_embeddings.weight"]
    )
    assert not torch.equal(
        out["cls.predictions.decoder.weight"], state["cls.predictions.decoder.weight"]
    )


def test_errors(model_store, tmp_path):
    src = model_store("bert")
    with pytest.raises(SelectionError, match=r"^nothing selected"):
        reinit(src, tmp_path / "o")
    with pytest.raises(
        SelectionError,
        match=r"--top-layers 5 is more than the 4 layers found \(bert.encoder.layer.0-3\)",
    ):
        reinit(src, tmp_path / "o", top_layers=5)
    with pytest.raises(
        PatternError, match=r"pattern matches no tensor \(bert.encoder.layer.9.\*\)"
    ):
        reinit(src, tmp_path / "o", ["bert.encoder.layer.9.*"])
    assert not (tmp_path / "o").exists()


def test_error_no_rule_and_sinusoidal(tmp_path, src_copy):
    from safetensors.torch import save_file

    odd = tmp_path / "odd.safetensors"
    save_file({"encoder.scale.weight": torch.ones(4)}, str(odd), metadata={"format": "pt"})
    with pytest.raises(
        InitRuleError,
        match=r"no re-initialisation rule .* \(encoder.scale.weight\): exclude it with -x",
    ):
        reinit(odd, tmp_path / "o.safetensors", ["*"])
    src = src_copy("distilbert")
    cfg = json.loads((src / "config.json").read_text())
    cfg["sinusoidal_pos_embds"] = True
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InitRuleError, match="sinusoidal"):
        reinit(src, tmp_path / "o", ["distilbert.embeddings.*"])
    res = reinit(
        src, tmp_path / "o", ["distilbert.embeddings.*"], ["*position_embeddings*"], dry_run=True
    )
    assert res.written is None and not (tmp_path / "o").exists()


def test_config_layer_count_mismatch(src_copy, tmp_path):
    src = src_copy("bert")
    cfg = json.loads((src / "config.json").read_text())
    cfg["num_hidden_layers"] = 6
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SelectionError, match="config.json says 6 layers but the weights have 4"):
        reinit(src, tmp_path / "o", top_layers=1)


def test_headless_and_distilbert_stacks(tmp_path):
    from ckptsurgeon.plan.selection import find_layer_stacks

    assert find_layer_stacks(["encoder.layer.0.a", "encoder.layer.1.a", "pooler.dense.weight"]) == {
        "encoder.layer": [0, 1]
    }
    assert find_layer_stacks(["transformer.layer.2.x", "transformer.layer.0.x"]) == {
        "transformer.layer": [0, 2]
    }
    assert find_layer_stacks(
        ["model.layers.1.mlp.up_proj.weight", "model.layers.0.x", "lm_head.weight"]
    ) == {"model.layers": [0, 1]}
    with pytest.raises(SelectionError, match="no encoder layer stack found"):
        from ckptsurgeon.plan.selection import top_layer_patterns

        top_layer_patterns(["a.weight"], 1, None, "x")


def test_seed_contract_golden_values():
    """The documented stream (SFC64 per chunk, Box-Muller, float32, round to nearest even) is
    part of the interface: the same seed must give the same values in every release."""
    f32 = b"".join(
        bytes(c)
        for c in generate("bert.pooler.dense.weight", "F32", (2, 3), Rule("normal", 0.02), 0)
    )
    assert torch.frombuffer(bytearray(f32), dtype=torch.float32).tolist() == pytest.approx(
        [-0.032507624, 0.025458012, 0.011597718, -0.017175252, -0.010579026, 0.005087442], abs=1e-9
    )
    bf16 = b"".join(
        bytes(c)
        for c in generate("bert.pooler.dense.weight", "BF16", (2, 3), Rule("normal", 0.02), 0)
    )
    assert bf16.hex() == "05bdd13c3e3c8dbc2dbca73b"


def test_normal_shape_of_distribution():
    raw = b"".join(bytes(c) for c in generate("w", "F32", (1 << 21,), Rule("normal", 1.0), seed=9))
    t = torch.frombuffer(bytearray(raw), dtype=torch.float32).double()
    for k, p in ((1, 0.682689), (2, 0.954500), (3, 0.997300)):
        assert (t.abs() < k).double().mean().item() == pytest.approx(p, abs=0.0015)
    assert ((t - t.mean()) ** 3).mean().item() == pytest.approx(0.0, abs=0.01)  # skewness
    assert ((t - t.mean()) ** 4).mean().item() == pytest.approx(3.0, abs=0.03)  # kurtosis


@pytest.mark.slow
def test_one_gb_embedding_is_generated_in_bounded_memory(tmp_path):
    """Peak memory is a few chunks, not the tensor: a 1 GiB embedding re-initialised in < 200 MiB."""

    from ckptsurgeon.formats.safetensors import build_header

    src = tmp_path / "emb.safetensors"
    rows, cols = 262_144, 1024
    header, _ = build_header(
        [("bert.embeddings.word_embeddings.weight", "F32", (rows, cols), rows * cols * 4)],
        {"format": "pt"},
    )
    with open(src, "wb") as fh:
        fh.write(header)
        fh.truncate(len(header) + rows * cols * 4)  # sparse zeros
    from conftest import peak_rss_mib

    rc, rss = peak_rss_mib(
        [sys.executable, "-m", "ckptsurgeon", "reinit", src, tmp_path / "o.safetensors", "-p", "*"]
    )
    assert rc == 0
    assert rss < 200, rss
    from ckptsurgeon import open_checkpoint

    ckpt = open_checkpoint(tmp_path / "o.safetensors")
    with ckpt.reader() as r:
        first = next(r.chunks(ckpt.tensors[0], 4 * cols * 2))
    row0 = torch.frombuffer(bytearray(first), dtype=torch.float32)
    assert torch.all(row0[:cols] == 0) and torch.all(row0[cols:] != 0)  # padding row 0 zeroed


def test_whole_output_identical_across_thread_counts(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    src = tmp_path / "src.safetensors"
    save_file(
        {
            "encoder.layer.0.dense.weight": np.zeros((3000, 1000), np.float32),
            "encoder.layer.0.dense.bias": np.ones(3000, np.float32),
        },
        str(src),
        metadata={"format": "pt"},
    )
    outs = []
    for threads in (1, 2, 4):
        dest = tmp_path / f"t{threads}.safetensors"
        reinit(src, dest, ["*"], threads=threads)
        outs.append(dest.read_bytes())
    assert outs[0] == outs[1] == outs[2]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_roberta_padding_rows_from_architectures(model_store, tmp_path):
    src = _copy(model_store("roberta"), tmp_path / "src")
    cfg = json.loads((src / "config.json").read_text())
    for key in ("model_type", "pad_token_id"):
        cfg.pop(key)
    cfg["architectures"] = ["RobertaForMaskedLM"]
    (src / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    # headless names, as old fastNLP/fairseq exports have them: no 'roberta.' prefix to go by
    reinit(src, out, "embeddings.*_embeddings.weight", strip_prefix="roberta.")
    state = reference_state(out)
    for name in ("embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight"):
        rows = state[name]
        assert (rows[1] == 0).all() and (rows[0] != 0).any(), name  # RoBERTa pads at 1
    assert (state["embeddings.token_type_embeddings.weight"] != 0).all()


def test_a_reinit_that_changes_nothing_is_refused(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    ids = np.arange(8, dtype=np.int64)
    weight = np.ones((4, 4), dtype=np.float32)
    specs = [
        ("embeddings.position_ids", "I64", (8,), 64),
        ("encoder.layer.0.dense.weight", "F32", (4, 4), 64),
    ]
    header, _ = build_header(specs, {"format": "pt"})
    (src / "model.safetensors").write_bytes(header + ids.tobytes() + weight.tobytes())
    code, _, err, _ = cli("reinit", src, tmp_path / "out", "-p", "*position_ids")
    assert_clean_error(code, err)
    assert err.strip() == (
        "Error: nothing to re-initialise: every selected tensor is skipped "
        f"(embeddings.position_ids: I64 buffer, never re-initialised) ({src}): "
        "select floating-point weights, biases or LayerNorm parameters"
    )
    assert leftovers(tmp_path) == [] and not (tmp_path / "out").exists()
