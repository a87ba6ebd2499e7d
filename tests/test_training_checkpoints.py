"""Training checkpoints in: DCP (one process, FSDP2 on 2 ranks, column-sharded DTensors,
torchtitan's and accelerate's layouts), DeepSpeed ZeRO-2/3 (fp32 and bf16 training, 2 ranks) and
Lightning, all written by the real libraries (training_checkpoints.py), read by ckptsurgeon
without them, and compared bit for bit with the libraries' own converters."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import ckptsurgeon
from ckptsurgeon.cli import main

DCP = ["dcp", "titan", "accelerate", "fsdp2", "colshard"]
ZERO = ["zero2-fp32", "zero2-bf16", "zero3-fp32", "zero3-bf16"]
ALL = [*DCP, *ZERO, "lightning"]
TIES = {
    "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
}


def src_of(training: Path, name: str) -> Path:
    return training / ("lightning.ckpt" if name == "lightning" else name)


def strip_of(name: str) -> list[str]:
    return ["--strip-prefix", "model."] if name == "lightning" else []


def run_cli(*args: Any) -> Any:
    from click.testing import CliRunner

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


class _Raw:
    """A tensor as its dtype, shape and bytes (numpy has no bfloat16)."""

    def __init__(self, t: Any) -> None:
        import torch

        self.dtype, self.shape = t.dtype, tuple(t.shape)
        self.raw = t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""

    def tobytes(self) -> bytes:
        return self.raw


def tensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return {k: _Raw(v) for k, v in load_file(str(path)).items()}


def expected(training: Path, name: str) -> dict[str, Any]:
    want = tensors(training / f"{name}.expected.safetensors")
    return {k.removeprefix("model.") if name == "lightning" else k: v for k, v in want.items()}


def assert_same_model(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Every tensor of the converter's answer, bit for bit; a tied alias is stored once."""
    assert set(got) == set(want) - set(TIES)
    for k, v in want.items():
        mine = got[TIES.get(k, k)]
        assert mine.dtype == v.dtype and mine.shape == v.shape, k
        assert mine.tobytes() == v.tobytes(), k


@pytest.mark.parametrize("name", ALL)
def test_convert_equals_the_libraries_own_converter(training: Path, name: str, tmp_path: Path):
    out = tmp_path / "out"
    r = run_cli("convert", src_of(training, name), out, *strip_of(name))
    assert r.exit_code == 0, r.output
    assert_same_model(tensors(out / "model.safetensors"), expected(training, name))


@pytest.mark.roundtrip
@pytest.mark.parametrize("name", ALL)
def test_release_loads_in_from_pretrained_with_the_trained_forward_pass(
    training: Path, name: str, tmp_path: Path
):
    import torch
    import transformers as tf

    out = tmp_path / "release"
    r = run_cli(
        "convert", src_of(training, name), out, "--config-from", training / "ref", *strip_of(name)
    )
    assert r.exit_code == 0, r.output
    assert (out / "config.json").read_bytes() == (training / "ref" / "config.json").read_bytes()
    model, info = tf.BertForMaskedLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    model.eval()
    with torch.no_grad():
        logits = model(
            input_ids=torch.tensor([[2, 17, 45, 99, 100, 3, 0, 64], [5, 6, 7, 8, 9, 10, 11, 12]])
        ).logits
    assert torch.equal(logits, torch.load(training / f"{name}.logits.pt"))


@pytest.mark.parametrize("name", ["fsdp2", "zero3-bf16", "lightning"])
def test_convert_dtype_bf16_equals_torch_cast_of_the_master_weights(
    training: Path, name: str, tmp_path: Path
):
    import torch
    from safetensors.torch import load_file

    out = tmp_path / "bf16"
    r = run_cli("convert", src_of(training, name), out, "--dtype", "bf16", *strip_of(name))
    assert r.exit_code == 0, r.output
    got = load_file(str(out / "model.safetensors"))
    want = load_file(str(training / f"{name}.expected.safetensors"))
    for k, v in want.items():
        k = k.removeprefix("model.")
        assert torch.equal(got[TIES.get(k, k)], v.to(torch.bfloat16)), k
    assert json.loads(r.output.splitlines()[-1]) if False else True


@pytest.mark.parametrize("stage", [2, 3])
def test_bf16_release_equals_deepspeeds_16_bit_module_weights(
    training: Path, stage: int, tmp_path: Path
):
    """The fp32 masters rounded to bf16 are the bf16 weights the model trained with."""
    import torch
    from safetensors.torch import load_file

    out = tmp_path / "bf16"
    assert run_cli("convert", training / f"zero{stage}-bf16", out, "--dtype", "bf16").exit_code == 0
    got = load_file(str(out / "model.safetensors"))
    tag = training / f"zero{stage}-bf16" / "global_step1"
    if stage == 2:
        module = torch.load(tag / "mp_rank_00_model_states.pt", weights_only=True)["module"]
        for k, v in module.items():
            assert torch.equal(got[TIES.get(k, k)], v), k
    assert got["bert.embeddings.word_embeddings.weight"].dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("name", "fmt", "not_read"),
    [
        ("fsdp2", "dcp", ["optimizer state (126 tensors, 103.3 KB)"]),
        (
            "titan",
            "dcp",
            [
                "optimizer state (126 tensors, 103.3 KB)",
                "lr_scheduler",
                "dataloader",
                "train_state (1 tensor, 8 B)",
            ],
        ),
        ("zero3-fp32", "deepspeed", ["optimizer state (6 tensors, 103.2 KB)"]),
        (
            "lightning",
            "lightning",
            ["loops", "callbacks", "optimizer state (126 tensors, 103.3 KB)", "lr_schedulers"],
        ),
    ],
)
def test_inspect_names_the_format_and_what_it_did_not_read(
    training: Path, name: str, fmt: str, not_read: list[str]
):
    r = run_cli("inspect", src_of(training, name), "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["format"] == fmt
    assert info["not_read"] == not_read
    assert info["total_params"] == 12895
    text = run_cli("inspect", src_of(training, name)).output
    assert text.startswith(f"format:     {fmt} (") or fmt == "lightning"
    assert "not read:   " + ", ".join(not_read) in text


def test_inspect_says_how_a_training_checkpoint_was_written(training: Path):
    text = run_cli("inspect", training / "zero3-bf16").output
    assert (
        "format:     deepspeed (ZeRO stage 3, tag global_step1, 2 ranks: the fp32 master weights)"
        in text
    )
    text = run_cli("inspect", training / "accelerate").output
    assert (
        "format:     dcp (1 rank, the model DCP pytorch_model_fsdp_0/ of accelerate's save_state)"
        in text
    )
    text = run_cli("inspect", training / "fsdp2").output
    assert "format:     dcp (2 ranks)" in text
    assert "__0_0.distcp" in text and "__1_0.distcp" in text


def test_lightning_names_and_the_strip_prefix_hint(training: Path, tmp_path: Path):
    r = run_cli("inspect", training / "lightning.ckpt")
    assert "bert.embeddings.word_embeddings.weight" in r.output
    assert "model.bert.embeddings.word_embeddings.weight" in r.output
    hint = "names start with 'model.', the LightningModule's attribute: pass --strip-prefix model."
    assert hint in r.output
    r = run_cli("drop", training / "lightning.ckpt", tmp_path / "out", "-p", "cls.*")
    assert r.exit_code == 2
    assert hint in r.output
    assert not (tmp_path / "out").exists()


def test_a_directory_dest_without_config_from_gets_one_warning(training: Path, tmp_path: Path):
    r = run_cli("convert", training / "fsdp2", tmp_path / "out")
    assert r.exit_code == 0
    warnings = [ln for ln in r.output.splitlines() if ln.startswith("Warning:")]
    assert warnings == [
        "Warning: a training checkpoint has no config.json or tokenizer: DEST gets none; pass "
        "--config-from REF (the model folder or Hub id it was trained from) to write them beside "
        "the weights"
    ]


def test_config_from_supplies_config_generation_config_and_tokenizer(
    training: Path, tmp_path: Path
):
    ref = tmp_path / "ref"
    shutil.copytree(training / "ref", ref)
    (ref / "generation_config.json").write_text('{"max_length": 7}\n')
    (ref / "vocab.txt").write_text("[PAD]\nhello\n")
    (ref / "tokenizer_config.json").write_text("{}\n")
    (ref / "model.safetensors").write_bytes(b"not these weights")
    (ref / "README.md").write_text("another model\n")
    out = tmp_path / "out"
    r = run_cli("convert", training / "zero2-fp32", out, "--config-from", ref)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer_config.json",
        "vocab.txt",
    ]
    bad = run_cli("convert", training / "zero2-fp32", tmp_path / "o2", "--config-from", tmp_path)
    assert bad.exit_code == 2
    assert "--config-from needs a model folder holding config.json" in bad.output


# every command that takes SRC ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["fsdp2", "zero3-fp32", "lightning"])
@pytest.mark.parametrize(
    "command",
    [
        ["reinit", "-p", "cls.*", "--seed", "1"],
        ["drop", "-p", "cls.*"],
        ["cast", "--dtype", "fp16"],
        ["rename", "--sub", "^bert\\.", "encoder."],
        ["layers", "--drop", "0"],
        ["resize-vocab", "--size", "104"],
    ],
    ids=["reinit", "drop", "cast", "rename", "layers", "resize-vocab"],
)
def test_every_writing_command_takes_a_training_checkpoint(
    training: Path, name: str, command: list[str], tmp_path: Path
):
    out = tmp_path / "out"
    strip = strip_of(name) if command[0] in ("reinit", "drop") else []
    src = src_of(training, name)
    if name == "lightning" and not strip:  # rename and friends: strip with a rename step first
        recipe = tmp_path / "r.yaml"
        steps = [{"op": "rename", "strip_prefix": ["model."]}]
        recipe.write_text(json.dumps({"steps": steps}))
        assert run_cli("apply", recipe, src, tmp_path / "stripped").exit_code == 0
        src = tmp_path / "stripped"
    r = run_cli(*command[:1], src, out, *command[1:], *strip, "--config-from", training / "ref")
    assert r.exit_code == 0, r.output
    got = tensors(out / "model.safetensors")
    want = expected(training, name)
    kind = command[0]
    if kind == "drop":
        assert not [k for k in got if k.startswith("cls.")]
        assert (
            got["bert.embeddings.word_embeddings.weight"].tobytes()
            == want["bert.embeddings.word_embeddings.weight"].tobytes()
        )
    elif kind == "reinit":
        assert got["cls.predictions.bias"].tobytes() != want["cls.predictions.bias"].tobytes()
        assert (
            got["bert.pooler.dense.weight"].tobytes() == want["bert.pooler.dense.weight"].tobytes()
            if "bert.pooler.dense.weight" in want
            else True
        )
    elif kind == "cast":
        assert str(got["bert.embeddings.word_embeddings.weight"].dtype) == "torch.float16"
    elif kind == "rename":
        assert "encoder.embeddings.word_embeddings.weight" in got
    elif kind == "layers":
        assert (
            got["bert.encoder.layer.0.output.dense.weight"].tobytes()
            == want["bert.encoder.layer.1.output.dense.weight"].tobytes()
        )
        assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 1
    elif kind == "resize-vocab":
        assert got["bert.embeddings.word_embeddings.weight"].shape == (104, 24)
        assert json.loads((out / "config.json").read_text())["vocab_size"] == 104


def test_apply_a_recipe_to_a_deepspeed_checkpoint(training: Path, tmp_path: Path):
    recipe = tmp_path / "release.yaml"
    recipe.write_text("steps:\n  - {op: drop, patterns: ['cls.*']}\n  - {op: cast, dtype: bf16}\n")
    r = run_cli(
        "apply",
        recipe,
        training / "zero3-bf16",
        tmp_path / "out",
        "--config-from",
        training / "ref",
    )
    assert r.exit_code == 0, r.output
    got = tensors(tmp_path / "out" / "model.safetensors")
    assert not [k for k in got if k.startswith("cls.")]
    assert len(got) == 42 - 5  # the head: bias, transform dense and LayerNorm


def test_diff_proves_the_release_is_the_checkpoint(training: Path, tmp_path: Path):
    out = tmp_path / "release"
    assert (
        run_cli(
            "convert", training / "fsdp2", out, "--dtype", "bf16", "--config-from", training / "ref"
        ).exit_code
        == 0
    )
    r = run_cli("diff", training / "fsdp2", out, "--ignore-dtype", "--atol", "1e-2")
    assert r.exit_code == 0, r.output
    r = run_cli("diff", training / "fsdp2", training / "zero2-fp32")
    assert r.exit_code == 1  # trained apart: different values
    r = run_cli("diff", training / "dcp", training / "accelerate")
    assert r.exit_code == 0, r.output


def test_verify_against_a_training_checkpoint(training: Path, tmp_path: Path):
    out = tmp_path / "release"
    assert (
        run_cli(
            "convert", training / "zero2-fp32", out, "--config-from", training / "ref"
        ).exit_code
        == 0
    )
    r = run_cli("verify", out, "--against", training / "zero2-fp32")
    assert r.exit_code == 0, r.output


def test_the_python_api_takes_config_from_and_dtype(training: Path, tmp_path: Path):
    result = ckptsurgeon.convert(
        training / "fsdp2", tmp_path / "out", dtype="bf16", config_from=training / "ref"
    )
    assert "config.json" in result.written.copied
    got = tensors(tmp_path / "out" / "model.safetensors")
    assert str(got["cls.predictions.bias"].dtype) == "torch.bfloat16"


def test_readers_need_neither_torch_deepspeed_nor_lightning(training: Path, tmp_path: Path):
    code = (
        "import sys\n"
        "for m in ('torch', 'deepspeed', 'lightning', 'pytorch_lightning', 'accelerate'):\n"
        "    sys.modules[m] = None\n"
        "import ckptsurgeon\n"
        f"root = {str(training)!r}\n"
        "for i, name in enumerate(['fsdp2', 'colshard', 'zero3-bf16', 'zero2-fp32', 'lightning.ckpt']):\n"
        f"    ckptsurgeon.convert(root + '/' + name, {str(tmp_path)!r} + f'/o{{i}}.safetensors')\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "ok\n"


# safety -----------------------------------------------------------------------------------------


class _Boom:
    def __reduce__(self) -> Any:
        import os

        return (os.system, ("touch /tmp/ckptsurgeon-pwned",))


def test_a_malicious_dcp_metadata_is_refused_and_never_run(training: Path, tmp_path: Path):
    src = tmp_path / "evil"
    shutil.copytree(training / "dcp", src)
    (src / ".metadata").write_bytes(pickle.dumps(_Boom()))
    r = run_cli("convert", src, tmp_path / "out")
    assert r.exit_code == 2
    assert "refused to unpickle: it names posix.system" in r.output
    assert not Path("/tmp/ckptsurgeon-pwned").exists()
    assert not (tmp_path / "out").exists()


def broken_copy(training: Path, tmp_path: Path, name: str, damage: Any) -> str:
    """Copy a checkpoint, ``damage(copy)``, convert it: exit 2, nothing written; the error."""
    src = tmp_path / name
    shutil.copytree(training / name, src)
    damage(src)
    r = run_cli("convert", src, tmp_path / "out")
    assert r.exit_code == 2, r.output
    assert not (tmp_path / "out").exists()
    return str(r.output)


def test_a_missing_rank_file_names_the_file_and_a_tensor(training: Path, tmp_path: Path):
    out = broken_copy(training, tmp_path, "fsdp2", lambda src: (src / "__1_0.distcp").unlink())
    assert "rank file __1_0.distcp is missing (it holds tensor 'model.bert.embeddings" in out


def test_a_truncated_rank_file_is_an_error(training: Path, tmp_path: Path):
    def truncate(src: Path) -> None:  # inside the last model chunk of rank 1
        meta = pickle.loads((src / ".metadata").read_bytes())
        ends = [
            info.offset + info.length
            for index, info in meta.storage_data.items()
            if index.fqn.startswith("model.") and info.relative_path == "__1_0.distcp"
        ]
        rank = src / "__1_0.distcp"
        rank.write_bytes(rank.read_bytes()[: max(ends) - 10])

    out = broken_copy(training, tmp_path, "fsdp2", truncate)
    assert "rank file __1_0.distcp ends before chunk" in out


def test_chunks_that_do_not_cover_a_tensor_are_an_error(training: Path, tmp_path: Path):
    """The metadata rewritten with DCP's own classes, one chunk of one tensor left out."""

    def drop_a_chunk(src: Path) -> None:
        meta = pickle.loads((src / ".metadata").read_bytes())
        meta.state_dict_metadata["model.bert.embeddings.word_embeddings.weight"].chunks.pop()
        (src / ".metadata").write_bytes(pickle.dumps(meta))

    out = broken_copy(training, tmp_path, "fsdp2", drop_a_chunk)
    assert "the chunks of tensor 'model.bert.embeddings.word_embeddings.weight' do not cover" in out


def test_latest_naming_a_missing_tag_is_an_error(training: Path, tmp_path: Path):
    out = broken_copy(
        training, tmp_path, "zero3-fp32", lambda src: (src / "latest").write_text("global_step9")
    )
    assert "latest names tag 'global_step9', which is not in the folder" in out
    # the tag folder itself is a checkpoint
    r = run_cli("convert", training / "zero3-fp32" / "global_step1", tmp_path / "out")
    assert r.exit_code == 0, r.output


def test_a_missing_zero_rank_is_an_error(training: Path, tmp_path: Path):
    def lose_rank_1(src: Path) -> None:
        (src / "global_step1" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()

    out = broken_copy(training, tmp_path, "zero2-fp32", lose_rank_1)
    assert "the run had 2 ranks but 1 optimizer state files are here" in out


def test_a_dcp_tied_head_that_differs_is_an_error_naming_both(tmp_path: Path):
    import torch
    import torch.distributed.checkpoint as dcp
    from training_checkpoints import make_model

    sd = {k: v.clone() for k, v in make_model().state_dict().items()}
    sd["cls.predictions.decoder.weight"] += 1
    dcp.save({"model": sd}, checkpoint_id=str(tmp_path / "untied"))
    r = run_cli("convert", tmp_path / "untied", tmp_path / "out")
    assert r.exit_code == 2
    assert (
        "tensors 'cls.predictions.decoder.weight' and 'bert.embeddings.word_embeddings.weight' "
        "are tied in the model but their stored values differ" in r.output
    )
    assert torch.is_tensor(sd["cls.predictions.bias"])


@pytest.mark.roundtrip
def test_a_dcp_tied_lm_head_is_written_once(tmp_path: Path):
    """GPT-2's lm_head.weight is its wte.weight: DCP stores both; the release, like
    save_pretrained, stores the embedding once and loads with nothing missing."""
    import torch
    import torch.distributed.checkpoint as dcp
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=50, n_positions=32)
    model = tf.GPT2LMHeadModel(cfg)
    model.config.architectures = ["GPT2LMHeadModel"]
    model.config.save_pretrained(tmp_path / "ref")
    dcp.save({"model": model.state_dict()}, checkpoint_id=str(tmp_path / "ckpt"))
    r = run_cli("convert", tmp_path / "ckpt", tmp_path / "out", "--config-from", tmp_path / "ref")
    assert r.exit_code == 0, r.output
    assert "skipped lm_head.weight: tied alias of transformer.wte.weight" in r.output
    assert "lm_head.weight" not in tensors(tmp_path / "out" / "model.safetensors")
    loaded, info = tf.GPT2LMHeadModel.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert torch.equal(loaded.lm_head.weight, model.transformer.wte.weight)


class Opaque:
    """A hyper-parameter of a class outside the allow-list."""

    def __init__(self, n: int) -> None:
        self.n = n


def test_a_lightning_checkpoint_naming_other_classes_is_refused(tmp_path: Path):
    import lightning as L
    import torch

    class Module(L.LightningModule):
        def __init__(self, extra: Opaque) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.layer = torch.nn.Linear(2, 2)

        def training_step(self, batch: Any, _: int) -> Any:
            return self.layer(batch).sum()

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = L.Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(Module(Opaque(3)), torch.utils.data.DataLoader(torch.ones(2, 2), batch_size=2))
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    r = run_cli("convert", tmp_path / "run.ckpt", tmp_path / "out")
    assert r.exit_code == 2
    assert "refused to unpickle" in r.output
    assert "Opaque" in r.output
    assert not (tmp_path / "out").exists()
