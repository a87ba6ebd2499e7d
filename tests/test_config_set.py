"""--config-set KEY=JSON on every writing command, {op: config, set: {...}} in recipes."""

from __future__ import annotations

import json

import pytest
from test_hardening import assert_clean_error, cli, leftovers

from ckptsurgeon import apply, drop, open_checkpoint
from ckptsurgeon.cli import main

BASE = 'architectures=["BertModel"]'


@pytest.mark.roundtrip
def test_drop_the_head_and_say_what_the_model_now_is(model_store, tmp_path):
    """After drop -p 'cls.*' config.json still named BertForMaskedLM, so a plain verify
    failed; the summary now suggests --config-set, which fixes it."""
    import transformers as tf

    src = model_store("bert")
    code, out, err, _ = cli("drop", src, tmp_path / "plain", "-p", "cls.*")
    assert code == 0, err
    assert (
        "Warning: the dropped cls.* held the head of BertForMaskedLM, which config.json's "
        "architectures still names: from_pretrained and verify would build that head anew; to "
        f"ship the base model add --config-set '{BASE}'" in err
    )
    code, out, err, _ = cli("drop", src, tmp_path / "out", "-p", "cls.*", "--config-set", BASE)
    assert code == 0, err
    assert "Warning" not in err
    assert 'config.json: architectures: ["BertForMaskedLM"] -> ["BertModel"]' in out.splitlines()
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["architectures"] == ["BertModel"]
    before = json.loads((src / "config.json").read_text())
    assert {k: v for k, v in cfg.items() if k != "architectures"} == {
        k: v for k, v in before.items() if k != "architectures"
    }
    record = json.loads(open_checkpoint(tmp_path / "out").metadata["ckptsurgeon"])
    assert record["arguments"]["config_set"] == {"architectures": ["BertModel"]}
    model, info = tf.BertModel.from_pretrained(str(tmp_path / "out"), output_loading_info=True)
    assert sorted(info["missing_keys"]) == ["pooler.dense.bias", "pooler.dense.weight"]
    code, out, err, _ = cli(
        "verify", tmp_path / "out", "--against", src, "--expect-missing", "pooler.*"
    )
    assert code == 0, out + err
    assert out.splitlines()[-1] == "BertModel: all checks pass"


def test_config_step_in_recipes_dry_run_json_and_dotted_keys(model_store, tmp_path):
    src = model_store("bert")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "steps:\n  - {op: drop, patterns: ['cls.*']}\n"
        "  - {op: config, set: {architectures: [BertModel], task_specific_params.x: 1.5e-3}}\n"
    )
    code, out, err, _ = cli("apply", recipe, src, tmp_path / "o", "--dry-run", "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["config_edits"] == [
        {"key": "architectures", "old": ["BertForMaskedLM"], "new": ["BertModel"]},
        {"key": "task_specific_params.x", "old": None, "new": 0.0015},
    ]
    assert plan["steps"][1] == {
        "op": "config",
        "set": {"architectures": ["BertModel"], "task_specific_params.x": 0.0015},
    }
    assert plan["warnings"] == []
    res = apply(recipe, src, tmp_path / "o")
    cfg = json.loads((tmp_path / "o" / "config.json").read_text())
    assert cfg["task_specific_params"] == {"x": 0.0015}
    assert res.plan.count("drop") == 5
    # the API: config_set= as a dict or as KEY=JSON strings, and the config verb itself
    res = drop(src, tmp_path / "a", "cls.*", config_set={"architectures": ["BertModel"]})
    assert json.loads((tmp_path / "a" / "config.json").read_text())["architectures"] == [
        "BertModel"
    ]
    code, out, err, _ = cli("config", src, tmp_path / "c", "--set", "initializer_range=0.01")
    assert code == 0, err
    assert json.loads((tmp_path / "c" / "config.json").read_text())["initializer_range"] == 0.01


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config-set", "architectures=BertModel"], "--config-set architectures: the value is not JSON ('BertModel')"),
        (["--config-set", "nokey"], "--config-set takes KEY=JSON, got 'nokey'"),
        (["--config-set", "architectures.x=1"], "config.json's 'architectures' is not an object, so 'architectures.x' cannot be set"),
        (["--config-set", "a..b=1"], "'a..b' is not a config.json key"),
    ],
)  # fmt: skip
def test_config_set_errors(model_store, tmp_path, args, message):
    code, _, err, _ = cli("drop", model_store("bert"), tmp_path / "out", "-p", "cls.*", *args)
    assert_clean_error(code, err, message)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_no_config_json_to_edit(model_store, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "model.safetensors").write_bytes(
        (model_store("bert") / "model.safetensors").read_bytes()
    )
    code, _, err, _ = cli("convert", bare, tmp_path / "out", "--config-set", "x=1")
    assert_clean_error(code, err, "SRC has no config.json to edit")


def test_every_writing_command_takes_config_set():
    writers = [n for n, c in main.commands.items() if any(p.name == "dest" for p in c.params)]
    assert sorted(writers) == [
        "add-tokens", "apply", "average", "cast", "config", "convert", "drop", "layers", "merge-lora", "reinit",
        "rename", "resize-vocab",
    ]  # fmt: skip
    for name in writers:
        assert any("--config-set" in p.opts for p in main.commands[name].params), name
