"""reinit --rules model: every architecture re-initialised the way its own code initialises it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import assert_bitwise_equal, reference_state
from test_hardening import assert_clean_error, cli

from ckptsurgeon import reinit

H = dict(hidden_size=64, num_attention_heads=4, intermediate_size=96, vocab_size=99)


def _build(name: str, seed: int) -> tuple[Any, str | None]:
    """A tiny model of the architecture and the stack --top-layers needs (None: the only one)."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    if name == "bert":
        return tf.BertForMaskedLM(tf.BertConfig(num_hidden_layers=2, **H)), None
    if name == "roberta":
        return tf.RobertaForMaskedLM(
            tf.RobertaConfig(num_hidden_layers=2, max_position_embeddings=66, **H)
        ), None
    if name == "deberta-v2":
        return tf.DebertaV2ForMaskedLM(tf.DebertaV2Config(num_hidden_layers=2, **H)), None
    if name == "modernbert":
        cfg = tf.ModernBertConfig(
            num_hidden_layers=2,
            max_position_embeddings=64,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            cls_token_id=1,
            sep_token_id=2,
            **H,
        )
        return tf.ModernBertForMaskedLM(cfg), None
    if name == "distilbert":
        return tf.DistilBertForMaskedLM(
            tf.DistilBertConfig(vocab_size=99, dim=64, n_layers=2, n_heads=4, hidden_dim=96)
        ), None
    if name == "gpt2":
        return tf.GPT2LMHeadModel(
            tf.GPT2Config(
                n_layer=2, n_embd=64, n_head=4, vocab_size=99, bos_token_id=0, eos_token_id=0
            )
        ), None
    if name == "t5":
        cfg = tf.T5Config(d_model=64, d_ff=96, num_layers=2, num_heads=4, d_kv=16, vocab_size=99)
        return tf.T5ForConditionalGeneration(cfg), "decoder.block"
    if name == "llama":
        cfg = tf.LlamaConfig(num_hidden_layers=2, num_key_value_heads=2, **H)
        return tf.LlamaForCausalLM(cfg), None
    if name == "opt":
        cfg = tf.OPTConfig(
            hidden_size=64,
            num_hidden_layers=2,
            ffn_dim=96,
            num_attention_heads=4,
            vocab_size=99,
            word_embed_proj_dim=64,
        )
        return tf.OPTForCausalLM(cfg), None
    if name == "clip":
        cfg = tf.CLIPConfig(
            text_config={
                "hidden_size": 64,
                "intermediate_size": 96,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "vocab_size": 99,
            },
            vision_config={
                "hidden_size": 64,
                "intermediate_size": 96,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "image_size": 16,
                "patch_size": 8,
            },
            projection_dim=16,
        )
        return tf.CLIPModel(cfg), "text_model.encoder.layers"
    raise ValueError(name)  # fmt: skip


ARCHS = [
    "bert",
    "roberta",
    "deberta-v2",
    "modernbert",
    "distilbert",
    "gpt2",
    "t5",
    "llama",
    "opt",
    "clip",
]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Any, str | None]]:
    import torch

    base = tmp_path_factory.mktemp("archs")
    out = {}
    for name in ARCHS:
        model, stack = _build(name, seed=0)
        with torch.no_grad():  # far from any init, so a re-initialisation is visible
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.3 + 0.1)
        model.save_pretrained(base / name)
        out[name] = (base / name, type(model), stack)
    return out


def _same_kind(got: Any, fresh: Any, name: str) -> None:
    """Constants equal exactly; random tensors from the same distribution (mean and std)."""
    g, f = got.double().numpy().reshape(-1), fresh.double().numpy().reshape(-1)
    if np.all(f == f[0]):
        assert np.all(g == f[0]), name
        return
    if f.size < 2000:  # too few values to tell 0.02 from 0.007
        return
    assert abs(g.std() / f.std() - 1) < 0.1, (name, g.std(), f.std())
    assert abs(g.mean() - f.mean()) < 0.1 * f.std() + 1e-3, (name, g.mean(), f.mean())


@pytest.mark.roundtrip
@pytest.mark.parametrize("arch", ARCHS)
def test_rules_model_matches_a_fresh_model(saved, tmp_path, arch):
    src, cls, stack = saved[arch]
    args = ["reinit", src, tmp_path / "out", "--rules", "model", "--top-layers", "1"]
    code, _, err, _ = cli(*args, *(["--stack", stack] if stack else []))
    assert code == 0, err
    model, info = cls.from_pretrained(str(tmp_path / "out"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    fresh = _build(arch, seed=1)[0].state_dict()
    before, after = reference_state(src), reference_state(tmp_path / "out")
    changed = [n for n in after if not _equal(after[n], before[n])]
    assert changed, "nothing was re-initialised"
    top = stack or ""
    for name, tensor in after.items():
        if name in changed:
            _same_kind(tensor, fresh[name], name)
        else:
            assert_bitwise_equal(tensor, before[name], name)
    assert all(top in n for n in changed)


def _equal(a: Any, b: Any) -> bool:
    import torch

    return a.shape == b.shape and bool(torch.equal(a, b))


def test_gpt2_parent_rule_scales_c_proj(saved, tmp_path):
    src, _, _ = saved["gpt2"]
    res = reinit(src, tmp_path / "out", "transformer.h.1.*", rules="model")
    rules = {t.name: t.rule for t in res.plan.tensors if t.action == "reinit"}
    assert rules["transformer.h.1.ln_1.weight"] == "ones"
    assert rules["transformer.h.1.attn.c_proj.bias"] == "zeros"
    after = reference_state(tmp_path / "out")
    std = float(after["transformer.h.1.attn.c_proj.weight"].std())
    assert abs(std - 0.02 / np.sqrt(2 * 2)) < 0.001  # 0.01, not the leaf's 0.02
    assert abs(float(after["transformer.h.1.attn.c_attn.weight"].std()) - 0.02) < 0.001


def test_auto_bert_model_agree_on_bert_and_values_are_selection_independent(saved, tmp_path):
    src, _, _ = saved["bert"]
    auto = reinit(src, tmp_path / "auto", top_layers=1, dry_run=True)
    assert all(
        t.rule and not t.rule.startswith("model init")
        for t in auto.plan.tensors
        if t.action == "reinit"
    )
    reinit(src, tmp_path / "bert", top_layers=1, rules="bert")
    reinit(src, tmp_path / "model", top_layers=1, rules="model")
    a, b = reference_state(tmp_path / "bert"), reference_state(tmp_path / "model")
    for name in a:
        if name.startswith("bert.encoder.layer.1."):
            _same_kind(a[name], b[name], name)
    q = "bert.encoder.layer.1.attention.self.query.weight"
    reinit(src, tmp_path / "one", q, rules="model", seed=5)
    reinit(src, tmp_path / "two", [q, "bert.encoder.layer.0.*"], rules="model", seed=5)
    reinit(src, tmp_path / "again", q, rules="model", seed=5)
    one, two, again = (reference_state(tmp_path / d)[q] for d in ("one", "two", "again"))
    assert_bitwise_equal(one, two, q)
    assert_bitwise_equal(one, again, q)
    meta = __import__("json").loads(
        __import__("ckptsurgeon").open_checkpoint(tmp_path / "one").metadata["ckptsurgeon"]
    )
    assert set(meta["model_rules_versions"]) == {"transformers", "torch"}


def test_rules_model_errors(saved, model_store, tmp_path):
    src, _, _ = saved["gpt2"]
    code, _, err, _ = cli(
        "reinit", src, tmp_path / "o", "--rules", "model", "--top-layers", "1", "--std", "0.1"
    )
    assert_clean_error(code, err, "--std sets BERT's rules", "pass --rules bert")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "model.safetensors").symlink_to(model_store("bert") / "model.safetensors")
    code, _, err, _ = cli("reinit", bare, tmp_path / "p", "--rules", "model", "-p", "cls.*")
    assert_clean_error(
        code, err, "--rules model needs config.json's model_type", "pass --rules bert"
    )


@pytest.mark.parametrize("arch", ["roberta", "distilbert"])
def test_bert_and_model_rules_agree_on_more_of_the_family(saved, tmp_path, arch):
    src, _, _ = saved[arch]
    reinit(src, tmp_path / "bert", top_layers=1, rules="bert")
    reinit(src, tmp_path / "model", top_layers=1, rules="model")
    a, b = reference_state(tmp_path / "bert"), reference_state(tmp_path / "model")
    before = reference_state(src)
    changed = [n for n in a if not _equal(a[n], before[n])]
    assert changed
    for name in changed:
        _same_kind(a[name], b[name], name)


def test_rules_model_without_transformers_says_what_to_do(saved, tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_transformers(name, *args, **kwargs):
        if name == "transformers":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_transformers)
    src, _, _ = saved["gpt2"]
    code, _, err, _ = cli("reinit", src, tmp_path / "o", "--top-layers", "1")  # auto: model
    assert err.strip() == (
        f"Error: --rules model needs transformers (and torch), which are not installed ({src}): "
        "pip install transformers, or pass --rules bert"
    )
    assert code == 2 and not (tmp_path / "o").exists()


@pytest.mark.roundtrip
def test_auto_takes_the_family_from_architectures_without_model_type(saved, tmp_path):
    """fastNLP's GPT-2 config.json has ``architectures`` but no ``model_type``: ``--rules auto``
    gave it BERT's rules, which then failed on ``ln_1.weight``. The family comes from the class
    that ``architectures`` names; a BERT class keeps the torch-free rules."""
    import json
    import shutil

    import transformers as tf

    for arch, cls, expect_model in (("gpt2", tf.GPT2LMHeadModel, True), ("bert", None, False)):
        src = tmp_path / f"{arch}-no-type"
        shutil.copytree(saved[arch][0], src)
        cfg = json.loads((src / "config.json").read_text())
        assert cfg.pop("model_type") and cfg["architectures"]
        (src / "config.json").write_text(json.dumps(cfg))
        res = reinit(src, tmp_path / f"{arch}-out", top_layers=1)
        drawn = [t for t in res.plan.tensors if t.action == "reinit"]
        # the model's rules carry the versions they were read from (streamed or drawn)
        assert drawn and all(bool(t.source.versions) == expect_model for t in drawn)
        if cls is not None:
            model, info = cls.from_pretrained(
                str(tmp_path / f"{arch}-out"), output_loading_info=True
            )
            assert not info["missing_keys"] and not info["unexpected_keys"]
            rules = {t.name: t.rule for t in drawn}
            assert rules["transformer.h.1.ln_1.weight"] == "ones"
    cfg = json.loads((tmp_path / "gpt2-no-type" / "config.json").read_text())
    cfg["architectures"] = ["NoSuchModelForAnything"]
    (tmp_path / "gpt2-no-type" / "config.json").write_text(json.dumps(cfg))
    code, _, err, _ = cli("reinit", tmp_path / "gpt2-no-type", tmp_path / "x", "--top-layers", "1")
    assert_clean_error(
        code, err, "config.json has no model_type and transformers", "'NoSuchModelForAnything'",
        'add "model_type" to config.json',
    )  # fmt: skip


def test_dry_run_names_the_model_rule_not_statistics_of_a_sample(saved, tmp_path):
    """``--rules model`` labels said ``model init: normal(0.00047, 0.0198)`` (statistics of the
    draw); users need the rule the model's code applies."""
    src, _, _ = saved["gpt2"]
    code, out, err, _ = cli("reinit", src, tmp_path / "o", "-p", "transformer.h.1.*", "--dry-run")
    assert code == 0, err
    rows = {line.split()[0]: line.split()[2] for line in out.splitlines()[1:] if " reinit " in line}
    assert rows["transformer.h.1.attn.c_attn.weight"] == "normal(0,"
    assert "transformer.h.1.attn.c_proj.weight  reinit  normal(0, 0.01)" in out  # 0.02/sqrt(2*2)
    assert "transformer.h.1.ln_1.weight         reinit  ones" in out
    assert "model init" not in out
    expected = {
        ("gpt2", "transformer.h.1.attn.c_attn.weight"): "normal(0, 0.02)",
        ("gpt2", "transformer.h.1.mlp.c_proj.weight"): "normal(0, 0.01)",
        ("gpt2", "transformer.h.1.ln_2.bias"): "zeros",
        ("modernbert", "model.layers.1.attn.Wqkv.weight"): "trunc_normal(0, 0.02, -0.04, 0.04)",
        ("modernbert", "model.layers.1.attn.Wo.weight"): "trunc_normal(0, 0.01, -0.02, 0.02)",
        ("modernbert", "model.layers.1.mlp_norm.weight"): "ones",
        (
            "deberta-v2",
            "deberta.embeddings.word_embeddings.weight",
        ): "normal(0, 0.02), row 0 zeroed",
        ("roberta", "roberta.embeddings.word_embeddings.weight"): "normal(0, 0.02), row 1 zeroed",
        (
            "t5",
            "decoder.block.1.layer.0.SelfAttention.q.weight",
        ): "normal(0, 0.0312)",  # (d_model * d_kv) ** -0.5
        ("llama", "model.layers.1.mlp.down_proj.weight"): "normal(0, 0.02)",
        (
            "clip",
            "text_model.encoder.layers.1.mlp.fc1.weight",
        ): "normal(0, 0.0884)",  # (2 * 64) ** -0.5
    }
    for (arch, name), rule in expected.items():
        res = reinit(saved[arch][0], tmp_path / arch, name, rules="model", dry_run=True)
        (t,) = [t for t in res.plan.tensors if t.name == name]
        assert t.describe() == rule, (arch, name, t.describe())
        assert res.to_json()["tensors"][0]["rule"] == rule


def test_rules_model_refuses_a_tensor_its_init_never_writes(saved, tmp_path):
    """CLIP's logit_scale is set when the model is built, not by _init_weights: drawing it
    returned whatever torch.empty held (a silent garbage value). Now a clear error."""
    src, _, _ = saved["clip"]
    code, _, err, _ = cli("reinit", src, tmp_path / "o", "-p", "logit_scale", "--rules", "model")
    assert_clean_error(
        code, err, "CLIPModel's own init does not set logit_scale", "pass --rules bert"
    )
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("arch", ["gpt2", "llama", "modernbert", "t5", "clip", "deberta-v2"])
def test_model_rules_stream_and_a_dry_run_draws_nothing(saved, tmp_path, arch, monkeypatch):
    """The model's init is run with its calls recorded and not run: the plan names the rule,
    and the tool's own generators draw it chunk by chunk; torch draws nothing."""
    from ckptsurgeon.rules.model import ModelInit

    def no_torch_draws(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("torch drew a tensor whose rule has a name")

    monkeypatch.setattr(ModelInit, "values", no_torch_draws)
    src, _, stack = saved[arch]
    extra = {"stack": stack} if stack else {}
    res = reinit(src, tmp_path / "dry", top_layers=1, rules="model", dry_run=True, **extra)
    drawn = [t for t in res.plan.tensors if t.action == "reinit"]
    assert drawn and all(t.source.__class__.__name__ == "Generate" for t in drawn)
    assert all(not t.rule.startswith("model init") for t in drawn)
    res = reinit(src, tmp_path / "out", top_layers=1, rules="model", seed=4, **extra)
    again = reinit(src, tmp_path / "again", top_layers=1, rules="model", seed=4, **extra)
    assert res.written is not None and again.written is not None
    for f in res.written.files:
        assert (tmp_path / "out" / f).read_bytes() == (tmp_path / "again" / f).read_bytes()


def test_trunc_normal_values_stay_inside_their_bounds(saved, tmp_path):
    src, _, _ = saved["modernbert"]
    name = "model.layers.1.attn.Wqkv.weight"
    res = reinit(src, tmp_path / "o", name, rules="model", seed=1)
    assert res.plan.tensors[[t.name for t in res.plan.tensors].index(name)].rule == (
        "trunc_normal(0, 0.02, -0.04, 0.04)"
    )
    values = reference_state(tmp_path / "o")[name].double().numpy()
    assert values.min() >= -0.04 and values.max() <= 0.04
    # N(0, 0.02) truncated at two deviations has std 0.02 * 0.8796
    assert abs(values.std() / (0.02 * 0.8796) - 1) < 0.05


def test_a_rule_the_calls_cannot_name_is_drawn_by_torch_and_says_so(saved, tmp_path, monkeypatch):
    import torch
    import transformers.models.llama.modeling_llama as llama

    original = llama.LlamaPreTrainedModel._init_weights

    def orthogonal(self: Any, module: Any) -> None:
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.orthogonal_(module.weight)
        else:
            original(self, module)

    monkeypatch.setattr(llama.LlamaPreTrainedModel, "_init_weights", orthogonal)
    src, _, _ = saved["llama"]
    name = "model.layers.1.mlp.down_proj.weight"
    res = reinit(src, tmp_path / "o", name, rules="model")
    (t,) = [t for t in res.plan.tensors if t.name == name]
    assert t.rule == "model init (drawn by torch)"
    w = reference_state(tmp_path / "o")[name].double()
    eye = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    assert torch.allclose(eye, torch.eye(eye.shape[0], dtype=torch.float64), atol=1e-4)
