"""``average``: the (weighted) mean of checkpoints, equal bit for bit to the float64 formula
``(w_0 * x_0 + w_1 * x_1 + ...) / sum(w)`` accumulated in input order and rounded once with
torch's ``.to()``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import ckptsurgeon
from ckptsurgeon.cli import main


def run_cli(*args: Any) -> Any:
    from click.testing import CliRunner

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def bert(path: Path, seed: int, dtype: str = "float32") -> Path:
    """A tiny BertForMaskedLM saved by transformers, its values drawn from ``seed``."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    cfg = tf.BertConfig(
        vocab_size=60,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=20,
    )
    model = tf.BertForMaskedLM(cfg).to(getattr(torch, dtype))
    model.save_pretrained(path)
    return path


def load(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def formula(inputs: list[dict[str, Any]], weights: list[float]) -> dict[str, Any]:

    out = {}
    for name, first in inputs[0].items():
        if not first.is_floating_point():
            out[name] = first
            continue
        acc = weights[0] * first.double()
        for w, sd in zip(weights[1:], inputs[1:], strict=True):
            acc = acc + w * sd[name].double()
        out[name] = (acc / sum(weights)).to(first.dtype)
    return out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("weights", [None, [3.0, 1.0, 0.5]])
def test_average_is_the_float64_formula_bit_for_bit(
    tmp_path: Path, dtype: str, weights: list[float] | None
):
    import torch

    srcs = [bert(tmp_path / f"m{i}", i, dtype) for i in range(3)]
    args = ["--weights", ",".join(f"{w:g}" for w in weights)] if weights else []
    r = run_cli("average", *srcs, tmp_path / "soup", *args)
    assert r.exit_code == 0, r.output
    got = load(tmp_path / "soup")
    want = formula([load(s) for s in srcs], weights or [1.0, 1.0, 1.0])
    assert set(got) == set(want)
    for name, t in want.items():
        assert got[name].dtype == t.dtype
        assert torch.equal(got[name].view(torch.uint8), t.view(torch.uint8)), name
    assert (tmp_path / "soup" / "config.json").read_bytes() == (
        srcs[0] / "config.json"
    ).read_bytes()


@pytest.mark.roundtrip
def test_an_average_loads_in_from_pretrained(tmp_path: Path):
    import transformers as tf

    srcs = [bert(tmp_path / f"m{i}", i) for i in range(2)]
    assert run_cli("average", *srcs, tmp_path / "soup").exit_code == 0
    _, info = tf.BertForMaskedLM.from_pretrained(tmp_path / "soup", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def with_tensor(src: Path, dest: Path, name: str, tensor: Any) -> Path:
    """A copy of ``src`` with one more tensor (written by safetensors itself)."""
    import shutil

    from safetensors.torch import save_file

    shutil.copytree(src, dest)
    sd = load(src)
    sd[name] = tensor
    save_file(sd, str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest


def test_integer_tensors_must_be_equal_and_are_copied(tmp_path: Path):
    import torch

    a = with_tensor(bert(tmp_path / "a0", 0), tmp_path / "a", "ids", torch.arange(5))
    b = with_tensor(bert(tmp_path / "b0", 1), tmp_path / "b", "ids", torch.arange(5))
    assert run_cli("average", a, b, tmp_path / "soup").exit_code == 0
    assert torch.equal(load(tmp_path / "soup")["ids"], torch.arange(5))
    c = with_tensor(bert(tmp_path / "c0", 2), tmp_path / "c", "ids", torch.arange(5) + 1)
    r = run_cli("average", a, c, tmp_path / "bad")
    assert r.exit_code == 2
    assert "tensor 'ids' (I64) differs between the inputs" in r.output
    assert not (tmp_path / "bad").exists()


def test_inputs_that_differ_are_an_error_naming_the_first_difference(tmp_path: Path):
    import torch

    a = bert(tmp_path / "a", 0)
    extra = with_tensor(bert(tmp_path / "b0", 1), tmp_path / "b", "extra", torch.zeros(2))
    r = run_cli("average", a, extra, tmp_path / "out")
    assert r.exit_code == 2
    assert f"the checkpoints differ: tensor 'extra' is missing from {a}" in r.output
    half = bert(tmp_path / "h", 1, "bfloat16")
    r = run_cli("average", a, half, tmp_path / "out")
    assert r.exit_code == 2
    assert "is F32[" in r.output and "but BF16[" in r.output and str(half) in r.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ("1,2", "2 weights for 3 checkpoints"),
        ("1,0,1", "--weights must be positive finite numbers"),
        ("1,x,1", "--weights must be numbers separated by commas"),
    ],
)
def test_weights_one_positive_number_per_src(tmp_path: Path, weights: str, message: str):
    srcs = [bert(tmp_path / f"m{i}", i) for i in range(3)]
    r = run_cli("average", *srcs, tmp_path / "out", "--weights", weights)
    assert r.exit_code == 2
    assert message in r.output


def test_one_src_is_a_usage_error(tmp_path: Path):
    r = run_cli("average", bert(tmp_path / "m", 0), tmp_path / "out")
    assert r.exit_code == 2
    assert "average needs at least two SRC and a DEST" in r.output


def test_dry_run_says_where_each_tensor_comes_from(tmp_path: Path):
    srcs = [bert(tmp_path / f"m{i}", i) for i in range(3)]
    r = run_cli("average", *srcs, tmp_path / "out", "--dry-run", "--json")
    plan = json.loads(r.stdout)["plan"] if "plan" in json.loads(r.stdout) else json.loads(r.stdout)
    rows = {t["name"]: t for t in plan["tensors"]}
    assert rows["bert.embeddings.word_embeddings.weight"]["source"] == "mean of 3"
    assert plan["inputs"] == [str(s) for s in srcs]
    r = run_cli("average", *srcs, tmp_path / "out", "--dry-run", "--weights", "2,1,1")
    assert "weighted mean of 3 (2, 1, 1)" in r.output


def test_the_release_records_its_inputs_and_verifies_against_the_first(tmp_path: Path):
    from ckptsurgeon.record import decode

    srcs = [bert(tmp_path / f"m{i}", i) for i in range(2)]
    assert run_cli("average", *srcs, tmp_path / "soup").exit_code == 0
    from safetensors import safe_open

    with safe_open(str(tmp_path / "soup" / "model.safetensors"), "np") as f:
        record = decode(f.metadata())
    assert record is not None
    assert record["operation"] == "average"
    assert record["arguments"]["with"] == [str(srcs[1])]
    inputs = record["inputs"]
    assert [i["path"] for i in inputs] == [str(srcs[1])]
    assert inputs[0]["bytes"] == (srcs[1] / "model.safetensors").stat().st_size
    r = run_cli("verify", tmp_path / "soup", "--against", srcs[0])
    assert r.exit_code == 0, r.output


def test_a_recipe_averages_then_casts_and_drops_in_one_pass(tmp_path: Path):
    import torch

    srcs = [bert(tmp_path / f"m{i}", i) for i in range(3)]
    recipe = tmp_path / "soup.yaml"
    recipe.write_text(
        "steps:\n"
        f"  - {{op: average, with: ['{srcs[1]}', '{srcs[2]}'], weights: [2, 1, 1]}}\n"
        "  - {op: cast, dtype: bf16}\n"
        "  - {op: drop, patterns: ['cls.*']}\n"
    )
    r = run_cli("apply", recipe, srcs[0], tmp_path / "out")
    assert r.exit_code == 0, r.output
    got = load(tmp_path / "out")
    want = formula([load(s) for s in srcs], [2.0, 1.0, 1.0])
    assert not [k for k in got if k.startswith("cls.")]
    for name, t in got.items():
        assert torch.equal(t, want[name].to(torch.bfloat16)), name
    late = tmp_path / "late.yaml"
    late.write_text(
        f"steps:\n  - {{op: cast, dtype: bf16}}\n  - {{op: average, with: ['{srcs[1]}']}}\n"
    )
    r = run_cli("apply", late, srcs[0], tmp_path / "late")
    assert r.exit_code == 2
    assert "average must come before steps that change values" in r.output


def test_the_python_api(tmp_path: Path):
    srcs = [bert(tmp_path / f"m{i}", i) for i in range(2)]
    result = ckptsurgeon.average(srcs, tmp_path / "soup", weights=[1, 3])
    assert result.plan.count("average") == len(load(tmp_path / "soup"))
    with pytest.raises(ckptsurgeon.CkptSurgeonError, match="at least two checkpoints"):
        ckptsurgeon.average(srcs[:1], tmp_path / "x")


def test_averaging_training_checkpoints_is_one_command(training: Path, tmp_path: Path):
    """The last checkpoints of a run, whatever wrote them, into one release."""
    import torch

    r = run_cli(
        "average", training / "fsdp2", training / "dcp", training / "zero3-fp32",
        tmp_path / "soup", "--config-from", training / "ref",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    from safetensors.torch import load_file

    inputs = [
        load_file(str(training / f"{n}.expected.safetensors"))
        for n in ("fsdp2", "dcp", "zero3-fp32")
    ]
    want = formula(inputs, [1.0, 1.0, 1.0])
    got = load(tmp_path / "soup")
    for name, t in got.items():
        assert torch.equal(t, want[name]), name
    assert (tmp_path / "soup" / "config.json").exists()
