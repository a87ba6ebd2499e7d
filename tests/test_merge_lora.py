"""``merge-lora``: adapters built and trained a step by PEFT itself, merged by ckptsurgeon, equal
bit for bit to PEFT's ``PeftModel.from_pretrained(base, adapter).merge_and_unload()``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import ckptsurgeon
from ckptsurgeon.cli import main

pytest.importorskip("peft", reason="the test extra installs peft")


def run_cli(*args: Any) -> Any:
    from click.testing import CliRunner

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def base_model(family: str, seed: int = 0) -> Any:
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    if family == "gpt2":
        cfg = tf.GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=50, n_positions=32)
        return tf.GPT2LMHeadModel(cfg)
    common = dict(
        vocab_size=60,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=20,
    )
    if family == "seqcls":
        return tf.BertForSequenceClassification(tf.BertConfig(num_labels=3, **common))
    return tf.BertForMaskedLM(tf.BertConfig(**common))


def build(tmp: Path, family: str, dtype: str = "float32", **lora: Any) -> tuple[Path, Path]:
    """BASE saved by transformers; ADAPTER made by PEFT and trained one step (non-zero B)."""
    import torch
    from peft import LoraConfig, get_peft_model

    model = base_model(family).to(getattr(torch, dtype))
    model.save_pretrained(tmp / "base")
    peft_model = get_peft_model(model.float(), LoraConfig(**lora))
    optim = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=0.05)
    ids = torch.tensor([[1, 5, 7, 9, 11, 13]])
    out = peft_model(input_ids=ids)
    out.logits.float().pow(2).mean().backward()
    optim.step()
    peft_model.save_pretrained(tmp / "adapter")
    return tmp / "base", tmp / "adapter"


def peft_merged(family: str, base: Path, adapter: Path, scale: float = 1.0) -> dict[str, Any]:
    import transformers as tf
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    cls = {
        "gpt2": tf.GPT2LMHeadModel,
        "seqcls": tf.BertForSequenceClassification,
        "bert": tf.BertForMaskedLM,
    }[family]
    model = PeftModel.from_pretrained(cls.from_pretrained(base), adapter)
    if scale != 1.0:
        for module in model.modules():
            if isinstance(module, LoraLayer):
                module.set_scale("default", scale)
    return dict(model.merge_and_unload().state_dict())


def ours(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def assert_equal_to_peft(got: dict[str, Any], want: dict[str, Any]) -> int:
    """Every tensor bit for bit; returns how many differ from BASE (so a test sees merges)."""
    import torch

    assert set(got) <= set(want)
    for name, t in got.items():
        assert t.dtype == want[name].dtype, name
        assert torch.equal(t, want[name]), name
    return len(got)


CASES = {
    "linear": ("bert", {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]}),
    "patterns-rslora": (
        "bert",
        {
            "r": 4,
            "lora_alpha": 8,
            "target_modules": ["query", "value", "dense"],
            "rank_pattern": {"value": 2},
            "alpha_pattern": {"layer.1.attention.self.query": 3},
            "use_rslora": True,
        },
    ),
    "conv1d": (
        "gpt2",
        {"r": 4, "lora_alpha": 16, "target_modules": ["c_attn", "c_fc"], "fan_in_fan_out": True},
    ),
    "embedding": ("bert", {"r": 4, "lora_alpha": 4, "target_modules": ["word_embeddings"]}),
    "dora": (
        "bert",
        {"r": 4, "lora_alpha": 8, "target_modules": ["query", "key"], "use_dora": True},
    ),
    "modules-to-save": (
        "seqcls",
        {"r": 2, "lora_alpha": 4, "target_modules": ["query"], "task_type": "SEQ_CLS"},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_merge_equals_peft_merge_and_unload(tmp_path: Path, case: str):
    import torch

    family, lora = CASES[case]
    base, adapter = build(tmp_path, family, **lora)
    r = run_cli("merge-lora", base, adapter, tmp_path / "merged")
    assert r.exit_code == 0, r.output
    got = ours(tmp_path / "merged")
    assert_equal_to_peft(got, peft_merged(family, base, adapter))
    before = ours(base)
    changed = [n for n, t in got.items() if not torch.equal(t, before[n])]
    assert changed  # the adapter was trained: its merge shows
    if case == "embedding":  # the tied decoder follows the merged embedding (stored once)
        assert "cls.predictions.decoder.weight" not in got
        assert changed == ["bert.embeddings.word_embeddings.weight"]
    if case == "modules-to-save":
        assert {"classifier.weight", "classifier.bias"} <= set(changed)


def test_scale_multiplies_every_delta_as_peft_set_scale(tmp_path: Path):
    base, adapter = build(tmp_path, "bert", r=4, lora_alpha=8, target_modules=["query"])
    r = run_cli("merge-lora", base, adapter, tmp_path / "half", "--scale", "0.5")
    assert r.exit_code == 0, r.output
    assert_equal_to_peft(ours(tmp_path / "half"), peft_merged("bert", base, adapter, 0.5))


def test_a_bf16_base_is_merged_in_float32_and_rounded_once(tmp_path: Path):
    import torch

    base, adapter = build(tmp_path, "bert", "bfloat16", r=4, lora_alpha=8, target_modules=["query"])
    assert run_cli("merge-lora", base, adapter, tmp_path / "m").exit_code == 0
    got = ours(tmp_path / "m")
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert got[name].dtype == torch.bfloat16
    base_w = ours(base)[name].float()
    from safetensors.torch import load_file

    ad = load_file(str(adapter / "adapter_model.safetensors"))
    key = "base_model.model." + name.removesuffix(".weight")
    b, a = ad[key + ".lora_B.weight"], ad[key + ".lora_A.weight"]
    # in float32, one fused W + s * (B @ A) (one band: 16 columns), rounded once to bf16
    assert torch.equal(got[name], torch.addmm(base_w, b, a, alpha=8 / 4).to(torch.bfloat16))
    # which is PEFT's formula in float32 up to float32 rounding, far below bf16's step
    peft_order = (base_w + (b @ a) * (8 / 4)).to(torch.bfloat16)
    assert torch.allclose(got[name].float(), peft_order.float(), rtol=2**-7, atol=0)


SIXTEEN_BIT = {
    "linear": ("bert", ["query", "intermediate.dense"], False),
    "conv1d": ("gpt2", ["c_attn", "c_fc"], True),
    "embedding": ("bert", ["word_embeddings"], False),
}


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("kind", sorted(SIXTEEN_BIT))
def test_a_16bit_base_is_merged_band_by_band_in_float32_and_rounded_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, dtype: str
):
    """Every merged tensor of a 16-bit base is ``W + s * (B @ A)`` by one fused float32 addmm
    per band of rows (transposed for Conv1D and embeddings), rounded once: bands of a few rows
    and chunks that cut through them here. It is within one 16-bit step of the whole matrix's
    addmm and of the float64 formula."""
    import torch
    from safetensors.torch import load_file

    from ckptsurgeon.run import execute, merge

    family, targets, fan_in_fan_out = SIXTEEN_BIT[kind]
    lora = {"r": 4, "lora_alpha": 8, "target_modules": targets, "fan_in_fan_out": fan_in_fan_out}
    base, adapter = build(tmp_path, family, dtype, **lora)
    monkeypatch.setattr(merge, "BAND_BYTES", 3 * 16 * 4)  # 3 rows of 16 float32 values
    monkeypatch.setattr(execute, "CHUNK_BYTES", 7 * 16 * 2 + 6)  # 7 rows and 3 values
    r = run_cli("merge-lora", base, adapter, tmp_path / "m")
    assert r.exit_code == 0, r.output
    got, before = ours(tmp_path / "m"), ours(base)
    ad = load_file(str(adapter / "adapter_model.safetensors"))
    half = getattr(torch, dtype)
    merged = 0
    for key in sorted(k for k in ad if k.endswith(("lora_A.weight", "lora_embedding_A"))):
        module = key.removeprefix("base_model.model.").rsplit(".lora_", 1)[0]
        a, b = ad[key].float(), ad[key.replace("_A", "_B")].float()
        left, right = (b, a) if kind == "linear" else (a.T, b.T)
        name = module + ".weight"
        w = before[name].float()
        step = merge.band_rows(w.shape[1])
        banded = torch.cat(
            [
                torch.addmm(w[i : i + step], left[i : i + step], right, alpha=2.0)
                for i in range(0, w.shape[0], step)
            ]
        )
        assert got[name].dtype == half
        assert torch.equal(got[name], banded.to(half)), name
        assert not torch.equal(got[name], before[name]), name
        whole = torch.addmm(w, left, right, alpha=2.0).to(half)
        exact = (w.double() + 2.0 * (left.double() @ right.double())).to(half)
        for other in (whole, exact):  # at most one step apart: adjacent 16-bit codes
            codes = (got[name].view(torch.int16).int() - other.view(torch.int16).int()).abs()
            assert int(codes.max()) <= 1, name
        merged += 1
    assert merged == {"embedding": 1}.get(kind, 4)  # every targeted module of both layers


def test_a_float64_base_is_merged_in_float64_as_peft(tmp_path: Path):
    """PEFT moves the adapter to a float64 base's dtype and merges there; so does ckptsurgeon."""
    import torch
    import transformers as tf
    from peft import PeftModel

    lora = {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]}
    base, adapter = build(tmp_path, "bert", "float64", **lora)
    assert run_cli("merge-lora", base, adapter, tmp_path / "m").exit_code == 0
    model = tf.BertForMaskedLM.from_pretrained(base, dtype=torch.float64)
    want = dict(PeftModel.from_pretrained(model, adapter).merge_and_unload().state_dict())
    got = ours(tmp_path / "m")
    name = "bert.encoder.layer.1.attention.self.value.weight"
    assert got[name].dtype == torch.float64
    assert not torch.equal(got[name], ours(base)[name])
    assert_equal_to_peft(got, want)


@pytest.mark.roundtrip
def test_a_merged_model_loads_in_from_pretrained(tmp_path: Path):
    import transformers as tf

    base, adapter = build(tmp_path, "bert", r=4, lora_alpha=8, target_modules=["query", "value"])
    assert run_cli("merge-lora", base, adapter, tmp_path / "m").exit_code == 0
    _, info = tf.BertForMaskedLM.from_pretrained(tmp_path / "m", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_dry_run_and_recipe(tmp_path: Path):
    import torch

    base, adapter = build(tmp_path, "bert", r=4, lora_alpha=8, target_modules=["query"])
    r = run_cli("merge-lora", base, adapter, tmp_path / "m", "--dry-run")
    assert r.exit_code == 0
    assert "copy of bert.encoder.layer.0.attention.self.query.weight + lora(r=4, s=2)" in r.output
    recipe = tmp_path / "release.yaml"
    recipe.write_text(
        f"steps:\n  - {{op: merge_lora, adapter: '{adapter}'}}\n"
        "  - {op: cast, dtype: bf16}\n  - {op: drop, patterns: ['cls.*']}\n"
    )
    r = run_cli("apply", recipe, base, tmp_path / "release")
    assert r.exit_code == 0, r.output
    got = ours(tmp_path / "release")
    want = peft_merged("bert", base, adapter)
    assert not [k for k in got if k.startswith("cls.")]
    for name, t in got.items():
        assert torch.equal(t, want[name].to(torch.bfloat16)), name


def test_the_output_records_the_adapter(tmp_path: Path):
    from safetensors import safe_open

    from ckptsurgeon.record import decode

    base, adapter = build(tmp_path, "bert", r=2, lora_alpha=2, target_modules=["value"])
    result = ckptsurgeon.merge_lora(base, adapter, tmp_path / "m")
    assert result.plan.count("merge") == 2
    with safe_open(str(tmp_path / "m" / "model.safetensors"), "np") as f:
        record = decode(f.metadata())
    assert record is not None and record["operation"] == "merge-lora"
    assert record["inputs"][0]["path"] == str(adapter)
    assert record["inputs"][0]["bytes"] == (adapter / "adapter_model.safetensors").stat().st_size
    r = run_cli("verify", tmp_path / "m", "--against", base)
    assert r.exit_code == 0, r.output


def test_other_adapter_types_are_refused(tmp_path: Path):
    import torch
    from peft import IA3Config, get_peft_model

    model = base_model("bert")
    model.save_pretrained(tmp_path / "base")
    cfg = IA3Config(target_modules=["query", "value"], feedforward_modules=[])
    get_peft_model(model, cfg).save_pretrained(tmp_path / "ia3")
    r = run_cli("merge-lora", tmp_path / "base", tmp_path / "ia3", tmp_path / "out")
    assert r.exit_code == 2
    assert "the adapter is IA3, not LoRA: merge-lora merges LoRA and DoRA adapters" in r.output
    assert not (tmp_path / "out").exists()
    assert torch.is_grad_enabled()


def test_an_adapter_for_another_model_is_refused(tmp_path: Path):
    base, adapter = build(tmp_path, "bert", r=4, lora_alpha=8, target_modules=["query"])
    other = tmp_path / "gpt2"
    base_model("gpt2").save_pretrained(other)
    r = run_cli("merge-lora", other, adapter, tmp_path / "out")
    assert r.exit_code == 2
    assert "matches no base tensor" in r.output
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["target_modules"] = ["query", "nowhere"]
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    r = run_cli("merge-lora", base, adapter, tmp_path / "out")
    assert r.exit_code == 2
    assert "target_modules entry 'nowhere' matches no module of the base" in r.output
    assert not (tmp_path / "out").exists()


def test_shapes_that_disagree_name_the_adapter_key(tmp_path: Path):
    import transformers as tf

    base, adapter = build(tmp_path, "bert", r=4, lora_alpha=8, target_modules=["query"])
    wider = tmp_path / "wider"
    cfg = tf.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=24, max_position_embeddings=20)  # fmt: skip
    tf.BertForMaskedLM(cfg).save_pretrained(wider)
    r = run_cli("merge-lora", wider, adapter, tmp_path / "out")
    assert r.exit_code == 2
    assert (
        "adapter module 'bert.encoder.layer.0.attention.self.query': A [4, 16] and B [16, 4]"
        in (r.output)
    )


def test_an_adapter_from_the_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from test_hub import make_cache

    base, adapter = build(tmp_path, "bert", r=4, lora_alpha=8, target_modules=["query"])
    cache = tmp_path / "hf-cache"
    make_cache(cache, "org/my-adapter", adapter)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    r = run_cli("merge-lora", base, "org/my-adapter", tmp_path / "m")
    assert r.exit_code == 0, r.output
    assert_equal_to_peft(ours(tmp_path / "m"), peft_merged("bert", base, adapter))


def test_a_base_unlike_the_one_the_adapter_names_gets_a_warning(tmp_path: Path):
    """base_model_name_or_path is only read (a config.json there), never trusted as a path."""
    import transformers as tf

    base, adapter = build(tmp_path, "bert", r=4, lora_alpha=8, target_modules=["query"])
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(base)
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    other = tmp_path / "other-vocab"
    cfg = tf.BertConfig(
        vocab_size=61,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=20,
    )
    tf.BertForMaskedLM(cfg).save_pretrained(other)
    r = run_cli("merge-lora", other, adapter, tmp_path / "m")
    assert r.exit_code == 0, r.output
    assert (
        f"the adapter was trained on {base}, whose vocab_size is 60; BASE's is 61: check that "
        "BASE is the model it was trained on"
    ) in r.output
    r = run_cli("merge-lora", base, adapter, tmp_path / "m2")
    assert "the adapter was trained on" not in r.output
