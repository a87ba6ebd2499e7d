"""apply: recipes of several operations in one streaming pass; every error names its step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_bitwise_equal, load_model, reference_state
from test_hardening import assert_clean_error, cli, leftovers, tree_hash

from ckptsurgeon import Recipe, RecipeError, apply, cast, drop, open_checkpoint, reinit, rename

FOUR_STEPS = """\
steps:
  - {op: rename, strip_prefix: ["module."]}
  - {op: drop, patterns: ["cls.*"]}
  - {op: reinit, top_layers: 2, seed: 3}
  - {op: cast, dtype: bf16}
"""


def test_four_step_recipe_equals_the_chained_commands(ddp_src, tmp_path):
    recipe = tmp_path / "release.yaml"
    recipe.write_text(FOUR_STEPS)
    code, out, err, _ = cli("apply", recipe, ddp_src, tmp_path / "one-pass")
    assert code == 0, err
    assert (
        out.splitlines()[-3]
        == "5 dropped, 32 re-initialised, 37 cast, 0 kept, 2 skipped [seed 3, std 0.02]"
    )
    # the same four steps as four commands, each writing a full copy
    rename(ddp_src, tmp_path / "s1", strip_prefix="module.")
    drop(tmp_path / "s1", tmp_path / "s2", "cls.*")
    reinit(tmp_path / "s2", tmp_path / "s3", top_layers=2, seed=3)
    cast(tmp_path / "s3", tmp_path / "s4", "bf16")
    chained, one = reference_state(tmp_path / "s4"), reference_state(tmp_path / "one-pass")
    assert sorted(chained) == sorted(one)
    for name in one:
        assert_bitwise_equal(one[name], chained[name], name)
    assert (tmp_path / "one-pass" / "config.json").read_text() == (
        tmp_path / "s4" / "config.json"
    ).read_text()
    # reruns are byte-identical, and the metadata records the normalised recipe
    apply(recipe, ddp_src, tmp_path / "again")
    assert tree_hash(tmp_path / "again") == tree_hash(tmp_path / "one-pass")
    record = json.loads(open_checkpoint(tmp_path / "one-pass").metadata["ckptsurgeon"])
    assert record["operation"] == "apply"
    assert record["steps"] == Recipe.load(recipe).to_json()
    assert record["steps"][2] == {
        "op": "reinit",
        "patterns": [],
        "top_layers": 2,
        "pooler": False,
        "exclude": [],
        "seed": 3,
        "std": None,
        "stack": None,
        "rules": "auto",
    }


@pytest.mark.roundtrip
def test_recipe_output_loads_with_the_reinitialised_layers(ddp_src, tmp_path):
    import torch

    out = tmp_path / "out"
    apply(
        [{"op": "rename", "strip_prefix": "module"}, {"op": "reinit", "top_layers": 1}],
        ddp_src,
        out,
    )
    model, info = load_model(out, "bert")
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    state = model.state_dict()
    for name, tensor in reference_state(out).items():
        assert_bitwise_equal(state[name], tensor, name)
    assert torch.equal(state["bert.encoder.layer.3.output.LayerNorm.weight"], torch.ones(32))


def test_steps_see_the_names_left_by_earlier_steps(ddp_src, tmp_path):
    # after the rename, 'cls.*' matches; before it, only 'module.cls.*' would
    res = apply(
        [{"op": "rename", "strip_prefix": ["module."]}, {"op": "drop", "patterns": "cls.*"}],
        ddp_src,
        tmp_path / "a",
        dry_run=True,
    )
    assert all(t.name.startswith("cls.") for t in res.plan.dropped) and res.plan.dropped
    code, _, err, _ = cli(
        "apply",
        _recipe(
            tmp_path,
            [{"op": "drop", "patterns": ["cls.*"]}, {"op": "rename", "strip_prefix": ["module."]}],
        ),
        ddp_src,
        tmp_path / "b",
    )
    assert_clean_error(code, err)
    assert err.startswith(
        "Error: recipe step 1 (drop): pattern matches no tensor (cls.*): names start with "
        "'module.' (saved from a wrapped model): pass --strip-prefix module.;"
    )
    # reinit after a cast draws in the cast dtype, like the chained commands
    res = apply(
        [
            {"op": "cast", "dtype": "fp16"},
            {"op": "reinit", "patterns": "module.cls.predictions.bias"},
        ],
        ddp_src,
        tmp_path / "c",
    )
    assert (
        str(reference_state(tmp_path / "c")["module.cls.predictions.bias"].dtype) == "torch.float16"
    )
    assert res.plan.count("reinit") == 1


def _recipe(tmp_path: Path, steps: object, name: str = "r.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"steps": steps}))
    return path


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        (
            [{"op": "prune"}],
            "Error: unknown op 'prune' (recipe step 1): ops are: add-tokens, average, cast, config, convert, drop, layers, merge-lora, reinit, rename, resize-vocab",
        ),
        (
            [{"op": "drop", "patterns": ["cls.*"]}, {"op": "reinit", "top_layer": 3}],
            "Error: unknown key 'top_layer' for reinit (recipe step 2 (reinit)): the keys of reinit are: exclude, patterns, pooler, rules, seed, stack, std, top_layers",
        ),
        (
            [{"op": "reinit", "top_layers": "3"}],
            "Error: top_layers must be an integer, got '3' (recipe step 1 (reinit)): fix the value",
        ),
        (
            [{"op": "reinit", "top_layers": 0}],
            "Error: top_layers must be >= 1, got 0 (recipe step 1 (reinit)): fix the value",
        ),
        ([{"op": "cast"}], "Error: dtype is required (recipe step 1 (cast)): give a value"),
        (
            [{"op": "cast", "dtype": "int8"}],
            "Error: dtype must be one of bf16, fp16, fp32, got 'int8' (recipe step 1 (cast)): fix the value",
        ),
        (
            [{"op": "rename", "sub": ["a", "b"]}],
            "Error: sub must be a list of [PATTERN, REPLACEMENT] pairs of strings, got ['a', 'b'] (recipe step 1 (rename)): fix the value",
        ),
        (
            [{"op": "drop", "patterns": [1]}],
            "Error: patterns must be a string or a list of strings, got [1] (recipe step 1 (drop)): fix the value",
        ),
        (
            ["drop"],
            "Error: a step must be a mapping like {{op: drop, ...}}, got 'drop' (recipe step 1): write each step as {{op: NAME, key: value, ...}}",
        ),
        (
            [],
            "Error: 'steps' must be a non-empty list of steps (recipe r.json): write steps: [{{op: drop, patterns: ['cls.*']}}, ...]",
        ),
        (
            [{"op": "convert"}, {"op": "drop", "patterns": ["nope.*"]}],
            "Error: recipe step 2 (drop): pattern matches no tensor (nope.*): check the names with `ckptsurgeon inspect`",
        ),
        (
            [{"op": "drop", "patterns": ["*"]}],
            "Error: recipe step 1 (drop): the selection drops all 74 tensors; the output would hold none ({src}): narrow -p, or add -x for what to keep",
        ),
    ],
)
def test_recipe_errors_name_the_step_and_key_before_writing(model_store, tmp_path, steps, message):
    src = model_store("bert")
    code, _, err, _ = cli("apply", _recipe(tmp_path, steps), src, tmp_path / "out")
    assert_clean_error(code, err)
    assert err.strip() == message.format(src=src)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_recipe_files_yaml_json_and_broken(model_store, tmp_path):
    src = model_store("bert")
    (tmp_path / "r.yaml").write_text("steps:\n  - op: drop\n    patterns: cls.*\n")
    assert apply(tmp_path / "r.yaml", src, tmp_path / "y", dry_run=True).plan.count("drop") == 5
    (tmp_path / "bad.yaml").write_text("steps: [ {op: drop\n")
    code, _, err, _ = cli("apply", tmp_path / "bad.yaml", src, tmp_path / "out")
    assert_clean_error(code, err, "recipe is not valid YAML", "bad.yaml")
    code, _, err, _ = cli("apply", tmp_path / "missing.yaml", src, tmp_path / "out")
    assert_clean_error(code, err, "cannot read the recipe", "missing.yaml")
    with pytest.raises(RecipeError, match="unknown top-level key 'step'"):
        Recipe.parse({"step": []})


# ---------------------------------------------------------------------------------------------
# rename


@pytest.mark.parametrize(
    ("name", "text", "needles"),
    [
        (
            "two-steps.yaml",
            "steps:\n  - {op: drop, patterns: ['cls.*']}\nsteps:\n  - {op: cast, dtype: bf16}\n",
            ["key 'steps' appears twice in one mapping (lines 1 and 3)", "two-steps.yaml, line 3"],
        ),
        (
            "nested.yaml",
            "steps:\n  - op: reinit\n    patterns: ['cls.*']\n    seed: 1\n    seed: 2\n",
            ["key 'seed' appears twice in one mapping (lines 4 and 5)", "nested.yaml, line 5"],
        ),
        (
            "two-steps.json",
            '{"steps": [{"op": "drop", "patterns": ["cls.*"]}],\n'
            ' "steps": [{"op": "cast", "dtype": "bf16"}]}\n',
            ["key 'steps' appears twice in one mapping (lines 1 and 2)", "two-steps.json, line 2"],
        ),
        (
            "op-twice.json",
            '{"steps": [\n  {"op": "drop", "patterns": ["cls.*"]},\n'
            '  {"op": "reinit", "top_layers": 1,\n\t"op": "cast", "dtype": "bf16"}\n]}\n',
            ["key 'op' appears twice in one mapping (lines 3 and 4)", "op-twice.json, line 4"],
        ),
    ],
)
def test_a_repeated_key_is_an_error_naming_it_and_its_line(
    model_store, tmp_path, name, text, needles
):
    """PyYAML and json keep the last of two equal keys: the first step list (a drop) vanished
    silently. A repeated key at any level is an error, nothing is written."""
    recipe = tmp_path / name
    recipe.write_text(text)
    with pytest.raises(RecipeError):
        Recipe.load(recipe)
    code, _, err, _ = cli("apply", recipe, model_store("bert", "safetensors"), tmp_path / "out")
    assert_clean_error(code, err, *needles)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_merge_keys_and_equal_keys_in_different_steps_are_fine(tmp_path):
    recipe = tmp_path / "ok.yaml"
    recipe.write_text(
        "steps:\n  - &d {op: drop, patterns: ['cls.*']}\n  - {<<: *d, patterns: ['x']}\n"
    )
    steps = Recipe.load(recipe).steps
    assert [s.options["patterns"] for s in steps] == [["cls.*"], ["x"]]


def test_numbers_in_exponent_form_are_numbers(model_store, tmp_path):
    """YAML 1.1 reads ``1e-2`` as a string: a recipe's ``std: 1e-2`` was refused."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "steps:\n  - {op: reinit, patterns: ['cls.*'], std: 1e-2}\n"
        "  - {op: reinit, patterns: ['cls.predictions.bias'], std: 2.5E-3, seed: 1e0}\n"
    )
    with pytest.raises(RecipeError, match=r"seed must be an integer, got 1\.0"):
        Recipe.load(recipe)
    recipe.write_text(
        "steps:\n  - {op: reinit, patterns: ['cls.*'], std: 1e-2}\n"
        "  - {op: reinit, patterns: ['*.LayerNorm.weight'], std: +2.5E-3}\n"
    )
    stds = [s.options["std"] for s in Recipe.load(recipe).steps]
    assert stds == [0.01, 0.0025]
    res = apply(recipe, model_store("bert", "safetensors"), tmp_path / "out", dry_run=True)
    assert "normal(0, 0.01)" in {t.describe() for t in res.plan.tensors}


def test_nested_aliases_are_refused_at_once_and_echoes_are_bounded(model_store, tmp_path):
    """'Billion laughs': 9 levels of 9 aliases expanded in the error message (40 s, 3.4 GB,
    then an unexpected MemoryError). Now refused before the recipe is built, in well under a
    second; and a 1 MB pattern is echoed cut, never whole."""
    import time

    levels = ["a: &a [" + ", ".join(["'lol'"] * 9) + "]"]
    for prev, cur in zip("abcdefgh", "bcdefghi", strict=True):
        levels.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    recipe = tmp_path / "laughs.yaml"
    recipe.write_text("\n".join(levels) + "\nsteps:\n  - {op: drop, patterns: *i}\n")
    src = model_store("bert", "safetensors")
    start = time.monotonic()
    code, _, err, _ = cli("apply", recipe, src, tmp_path / "out")
    assert time.monotonic() - start < 5
    assert_clean_error(code, err, "recipe expands to more than 100,000 values", "laughs.yaml")
    # below the limit, a wrongly typed nested value is echoed bounded in depth and length
    inline = "[&a [" + ", ".join(["'lol'"] * 9) + "], &b [" + ", ".join(["*a"] * 9) + "]]"
    recipe.write_text(f"steps:\n  - {{op: drop, patterns: {inline}}}\n")
    code, _, err, _ = cli("apply", recipe, src, tmp_path / "out")
    assert_clean_error(
        code, err, "patterns must be a string or a list of strings, got [['lol'", "...]"
    )
    assert len(err) < 600
    huge = "cls." + "x" * 1_000_000
    recipe.write_text(f"steps:\n  - {{op: drop, patterns: ['{huge}']}}\n")
    code, _, err, _ = cli("apply", recipe, src, tmp_path / "out")
    assert_clean_error(code, err, "pattern matches no tensor", "more characters")
    assert len(err) < 3000
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
