"""rename: new names for tensors, bytes unchanged; outputs load under the new names."""

from __future__ import annotations

import json

import pytest
from conftest import assert_bitwise_equal, load_model, reference_state
from test_hardening import assert_clean_error, cli

from ckptsurgeon import apply, open_checkpoint, rename


@pytest.mark.roundtrip
def test_rename_strips_ddp_prefix_and_loads_with_no_missing_key(ddp_src, tmp_path):
    code, out, err, _ = cli("rename", ddp_src, tmp_path / "out", "--strip-prefix", "module.")
    assert code == 0, err
    model, info = load_model(tmp_path / "out", "bert")
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    written = reference_state(tmp_path / "out")
    assert "bert.embeddings.word_embeddings.weight" in written  # the tied canonical, renamed
    source = reference_state(ddp_src)
    for name, tensor in written.items():
        assert_bitwise_equal(tensor, source["module." + name], name)
    tied = json.loads(open_checkpoint(tmp_path / "out").metadata["ckptsurgeon"])[
        "tied_aliases_dropped"
    ]
    assert tied["cls.predictions.decoder.weight"] == "bert.embeddings.word_embeddings.weight"


@pytest.mark.roundtrip
def test_encoder_extracted_from_a_classifier_loads_as_the_base_model(model_store, tmp_path):
    import transformers

    src = model_store("bert-seqcls")
    apply(
        [{"op": "drop", "patterns": ["classifier.*"]}, {"op": "rename", "sub": [["^bert\\.", ""]]}],
        src,
        tmp_path / "encoder",
    )
    assert not any(
        n.startswith(("bert.", "classifier.")) for n in reference_state(tmp_path / "encoder")
    )
    model, info = transformers.BertModel.from_pretrained(
        str(tmp_path / "encoder"), output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    source = reference_state(src)
    for name, tensor in model.state_dict().items():
        assert_bitwise_equal(tensor, source["bert." + name], name)


@pytest.mark.roundtrip
def test_add_prefix_and_sub_make_a_headless_checkpoint_load_as_another_family(
    model_store, tmp_path
):
    """A BertModel's weights under RoBERTa's names (same architecture) load as RobertaModel."""
    import torch
    import transformers

    cfg = transformers.RobertaConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=66, type_vocab_size=2,
    )  # fmt: skip
    torch.manual_seed(0)
    bert = transformers.BertModel(
        transformers.BertConfig(**{**cfg.to_dict(), "model_type": "bert"})
    )
    src = tmp_path / "headless"
    bert.save_pretrained(src)
    cfg.save_pretrained(src)  # the target family's config
    rename(src, tmp_path / "out", add_prefix="roberta.")
    model, info = transformers.RobertaModel.from_pretrained(
        str(tmp_path / "out"), output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    for name, tensor in bert.state_dict().items():
        assert_bitwise_equal(model.state_dict()[name], tensor, name)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--sub", "layer\\.\\d+", "layer"],
            "Error: the rename makes 'bert.encoder.layer.0.attention.output.LayerNorm.bias' and 'bert.encoder.layer.1.attention.output.LayerNorm.bias' the same name 'bert.encoder.layer.attention.output.LayerNorm.bias' ({src}): rename them apart, or drop one of the two first",
        ),
        (
            ["--sub", ".*", ""],
            "Error: the rename makes 'bert.embeddings.LayerNorm.bias' an empty name (bert.embeddings.LayerNorm.bias): keep at least one character",
        ),
        (
            ["--sub", "^nothing", "x"],
            "Error: the rename changes no name ({src}): check the patterns with `ckptsurgeon inspect`",
        ),
        (
            ["--sub", "(", "x"],
            "Error: --sub pattern is not a valid regular expression (missing ), unterminated subpattern at position 0) ((): fix the pattern (Python re syntax)",
        ),
        (
            [],
            "Error: nothing to rename ({src}): give --sub REGEX REPL, --add-prefix or --strip-prefix",
        ),
        (
            ["--strip-prefix", "module."],
            "Error: no tensor name starts with 'module.' ({src}): names start like 'bert.embeddings.LayerNorm.bias'",
        ),
    ],
)
def test_rename_errors(model_store, tmp_path, args, message):
    src = model_store("bert")
    code, _, err, _ = cli("rename", src, tmp_path / "out", *args)
    assert_clean_error(code, err)
    assert err.strip() == message.format(src=src)
    assert list(tmp_path.iterdir()) == []
