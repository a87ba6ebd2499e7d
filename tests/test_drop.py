"""drop: exactly the dropped keys are missing on load and re-created by the model's own init."""

from __future__ import annotations

import pytest
import torch
from conftest import LAYOUTS, assert_bitwise_equal, load_model, reference_state

from ckptsurgeon import SelectionError, drop

pytestmark = pytest.mark.roundtrip


@pytest.mark.parametrize("layout", LAYOUTS)
def test_drop_query_projection_reports_exactly_those_missing(model_store, tmp_path, layout):
    src = model_store("bert", layout)
    pattern = "bert.encoder.layer.0.attention.self.query.*"
    result = drop(src, tmp_path / "out", [pattern])
    dropped = sorted(t.name for t in result.plan.dropped)
    assert dropped == [
        "bert.encoder.layer.0.attention.self.query.bias",
        "bert.encoder.layer.0.attention.self.query.weight",
    ]
    model, info = load_model(tmp_path / "out", "bert")
    assert info["missing_keys"] == dropped
    assert info["unexpected_keys"] == []
    source = reference_state(src)
    state = model.state_dict()
    for name, tensor in source.items():
        if name not in dropped:
            assert_bitwise_equal(state[name], tensor, name)
    # re-created by _init_weights: bias zero, weight fresh
    assert torch.all(state["bert.encoder.layer.0.attention.self.query.bias"] == 0)
    assert not torch.equal(
        state["bert.encoder.layer.0.attention.self.query.weight"],
        source["bert.encoder.layer.0.attention.self.query.weight"],
    )


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("family", ["roberta", "distilbert", "electra"])
def test_drop_top_layer_other_families(model_store, tmp_path, family, layout):
    stack = {
        "roberta": "roberta.encoder.layer.2.*",
        "distilbert": "distilbert.transformer.layer.2.*",
        "electra": "electra.encoder.layer.2.*",
    }[family]
    src = model_store(family, layout)
    result = drop(src, tmp_path / "out", [stack])
    dropped = sorted(t.name for t in result.plan.dropped)
    assert dropped
    model, info = load_model(tmp_path / "out", family)
    assert info["missing_keys"] == dropped
    assert info["unexpected_keys"] == []
    state = model.state_dict()
    for name, tensor in reference_state(src).items():
        if name not in dropped:
            assert_bitwise_equal(state[name], tensor, name)


def test_drop_head_then_load_as_classifier(model_store, tmp_path):
    import transformers

    result = drop(model_store("bert", "bin"), tmp_path / "out", ["cls.*"])
    assert result.plan.count("drop") == 5
    out = reference_state(tmp_path / "out")
    assert not [n for n in out if n.startswith("cls.")]
    model, info = transformers.BertForSequenceClassification.from_pretrained(
        str(tmp_path / "out"), num_labels=2, output_loading_info=True
    )
    # the masked-LM model has no pooler, so the classifier's pooler is missing too
    assert sorted(info["missing_keys"]) == [
        "bert.pooler.dense.bias",
        "bert.pooler.dense.weight",
        "classifier.bias",
        "classifier.weight",
    ]
    assert list(info["unexpected_keys"]) == []


def test_refuses_canonical_while_alias_stays(tmp_path, model_store):
    from safetensors.torch import save_file

    state = {k: v.clone() for k, v in reference_state(model_store("bert", "bin")).items()}
    src = tmp_path / "src"
    src.mkdir()
    save_file(state, str(src / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(
        SelectionError,
        match=r"dropping bert.embeddings.word_embeddings.weight while its tied alias "
        r"cls.predictions.decoder.weight stays",
    ):
        drop(src, tmp_path / "out", ["bert.embeddings.word_embeddings.weight"])
    assert not (tmp_path / "out").exists()
    drop(
        src,
        tmp_path / "out",
        ["bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight"],
    )


def test_dry_run_and_exclude(model_store, tmp_path):
    result = drop(
        model_store("bert"),
        tmp_path / "out",
        ["bert.encoder.layer.{2..3}.*"],
        ["*LayerNorm*"],
        dry_run=True,
    )
    assert result.written is None
    assert not (tmp_path / "out").exists()
    dropped = [t.name for t in result.plan.dropped]
    assert len(dropped) == 2 * 12
    assert not [n for n in dropped if "LayerNorm" in n]
