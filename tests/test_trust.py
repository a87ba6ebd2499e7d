"""Never destroy or leak a user's files, never ship stale weights, refuse what cannot be right.

Each test here failed on the code before the "Trust" issue and passes after it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import reference_state
from test_hardening import assert_clean_error, cli, leftovers, tree_hash

from ckptsurgeon import PatternError, convert, drop, inspect, open_checkpoint, reinit
from ckptsurgeon.errors import DestinationError
from ckptsurgeon.formats.safetensors import build_header


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------------------------------------
# 1. DEST may never be SRC, inside SRC, or contain SRC


def test_overwrite_refuses_a_destination_that_contains_the_source(model_store, tmp_path):
    inner = _copy(model_store("bert"), tmp_path / "outer" / "inner")
    before = tree_hash(tmp_path / "outer")
    code, out, err, _ = cli("convert", inner, tmp_path / "outer", "--overwrite")
    assert_clean_error(code, err, "destination contains the source checkpoint")
    assert tree_hash(tmp_path / "outer") == before


def test_overwrite_refuses_the_project_folder_around_the_model(model_store, tmp_path):
    proj = tmp_path / "proj"
    _copy(model_store("bert"), proj / "model")
    (proj / "code").mkdir()
    (proj / "code" / "train.py").write_text("print('my work')\n")
    before = tree_hash(proj)
    code, _, err, _ = cli("reinit", proj / "model", proj, "--top-layers", "1", "--overwrite")
    assert_clean_error(code, err, "destination contains the source checkpoint", str(proj))
    assert tree_hash(proj) == before


def test_overwrite_refuses_the_folder_of_a_single_file_source(model_store, tmp_path):
    tb2 = _copy(model_store("bert"), tmp_path / "tb2")
    before = tree_hash(tb2)
    code, _, err, _ = cli("convert", tb2 / "model.safetensors", tb2, "--overwrite")
    assert_clean_error(code, err, "destination contains the source checkpoint")
    assert tree_hash(tb2) == before and (tb2 / "config.json").is_file()


def test_containment_is_judged_on_resolved_paths(model_store, tmp_path):
    inner = _copy(model_store("bert"), tmp_path / "outer" / "inner")
    (tmp_path / "src-link").symlink_to(inner)
    (tmp_path / "outer-link").symlink_to(tmp_path / "outer")
    before = tree_hash(tmp_path / "outer")
    for src, dest, what in [
        (tmp_path / "src-link", tmp_path / "outer", "contains the source"),
        (inner, tmp_path / "outer-link", "contains the source"),
        (inner, tmp_path / "outer" / "x" / ".." / "inner", "is the source"),
        (tmp_path / "src-link", inner / "sub", "inside the source"),
    ]:
        for args in (["convert"], ["drop", "-p", "cls.*"]):
            code, _, err, _ = cli(args[0], src, dest, *args[1:], "--overwrite")
            assert_clean_error(code, err, what)
    assert tree_hash(tmp_path / "outer") == before


# ---------------------------------------------------------------------------------------------
# 2. --overwrite replaces only a checkpoint directory


def test_overwrite_refuses_a_directory_with_foreign_files(model_store, tmp_path):
    important = tmp_path / "important"
    important.mkdir()
    (important / "thesis.tex").write_text("\\documentclass{article}\n")
    (important / "config.json").write_text("{}\n")
    code, _, err, _ = cli("convert", model_store("bert"), important, "--overwrite")
    assert_clean_error(code, err, "'thesis.tex'", "remove DEST by hand")
    assert (important / "thesis.tex").read_text() == "\\documentclass{article}\n"
    assert leftovers(tmp_path) == []
    # nested too
    (important / "thesis.tex").unlink()
    (important / "sub").mkdir()
    (important / "sub" / "data.csv").write_text("1,2\n")
    code, _, err, _ = cli("convert", model_store("bert"), important, "--overwrite")
    assert_clean_error(code, err, "'sub/data.csv'")


def test_overwrite_refuses_a_file_that_is_not_a_checkpoint(model_store, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me\n")
    code, _, err, _ = cli("convert", model_store("bert"), notes, "--overwrite")
    assert_clean_error(code, err, "is a file that is not a checkpoint")
    assert notes.read_text() == "keep me\n"
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    code, _, err, _ = cli("convert", model_store("bert"), link, "--overwrite")
    assert_clean_error(code, err, "destination is a symbolic link")


def test_overwrite_replaces_checkpoints_and_its_own_outputs(model_store, tmp_path):
    src = _copy(model_store("bert"), tmp_path / "src")
    (src / "train.py").write_text("print('copied beside the weights')\n")
    # a save_pretrained directory (weights, config, tokenizer files, a module folder)
    hub = _copy(model_store("bert", "safetensors-sharded"), tmp_path / "hub")
    (hub / "README.md").write_text("# card\n")
    convert(src, hub, overwrite=True)
    assert (hub / "train.py").is_file() and not (hub / "model.safetensors.index.json").exists()
    # ckptsurgeon's own output, holding the copied train.py: replaceable again
    convert(src, hub, overwrite=True, max_shard_size="20KB")
    assert (hub / "model.safetensors.index.json").is_file()
    # an empty directory
    (tmp_path / "empty").mkdir()
    convert(src, tmp_path / "empty", overwrite=True)
    # but a file added to ckptsurgeon's output by hand is protected
    (hub / "results.csv").write_text("acc,0.9\n")
    with pytest.raises(DestinationError, match="'results.csv'"):
        convert(src, hub, overwrite=True)


# ---------------------------------------------------------------------------------------------
# 3. Symlinks, loops and special files in SRC


def test_symlinks_out_of_src_are_not_followed(model_store, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("password=hunter2\n")
    src = _copy(model_store("bert"), tmp_path / "src")
    (src / "notes.txt").symlink_to(secret)
    (src / "sub").mkdir()
    (src / "sub" / "etc").symlink_to("/etc")
    (src / "sub" / "up").symlink_to("..")  # a loop back to SRC
    (src / "sub" / "again").symlink_to(src / "sub")  # a loop to its own folder
    (src / "sub" / "vocab-link.txt").symlink_to(src / "tokenizer_config.json")  # inside: kept
    (src / "dangling").symlink_to(src / "nowhere")  # inside, but broken
    os.mkfifo(src / "pipe")  # opening it would block forever
    os.mkfifo(src / "sub" / "pipe2")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "ckptsurgeon", "convert", str(src), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    copied = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert copied == [
        "1_Pooling",
        "1_Pooling/config.json",
        "config.json",
        "model.safetensors",
        "sub",
        "sub/vocab-link.txt",
        "tokenizer_config.json",
    ]
    assert not any(p.is_symlink() for p in out.rglob("*"))
    assert (out / "sub" / "vocab-link.txt").read_text() == (
        src / "tokenizer_config.json"
    ).read_text()
    assert "hunter2" not in "".join(p.read_text() for p in out.rglob("*.txt"))
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("Warning:")]
    assert (
        "Warning: not copied, symbolic links that lead out of SRC (copy them by hand if they "
        f"belong to this model): notes.txt -> {secret}, sub/etc -> /etc" in warnings
    )
    assert (
        "Warning: not copied, links back to a folder already copied: sub/again/, sub/up/"
        in warnings
    )
    assert (
        "Warning: not copied, FIFOs, sockets or devices (never opened): pipe, sub/pipe2" in warnings
    )
    assert "Warning: not copied, broken links or unreadable entries: dangling" in warnings


def _fake_hf_cache(tmp_path: Path, src: Path) -> Path:
    """``models--org--tiny/`` with blobs, refs/main and a snapshot of relative symlinks."""
    repo = tmp_path / "hub" / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    commit = "a" * 40
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    for f in sorted(src.rglob("*")):
        rel = f.relative_to(src)
        if f.is_dir():
            (snap / rel).mkdir(parents=True, exist_ok=True)
            continue
        blob = repo / "blobs" / f"blob{len(list((repo / 'blobs').iterdir()))}"
        shutil.copyfile(f, blob)
        (snap / rel).parent.mkdir(parents=True, exist_ok=True)
        (snap / rel).symlink_to(os.path.relpath(blob, (snap / rel).parent))
    return snap


def test_hugging_face_cache_snapshot_copies_its_blobs_as_files(model_store, tmp_path):
    src = model_store("bert")
    snap = _fake_hf_cache(tmp_path, src)
    out = tmp_path / "out"
    result = reinit(snap, out, top_layers=1)
    assert not any("not copied" in w for w in result.plan.warnings)
    assert sorted(result.written.copied) == ["1_Pooling/", "config.json", "tokenizer_config.json"]
    for rel in ["config.json", "tokenizer_config.json", "1_Pooling/config.json"]:
        assert not (out / rel).is_symlink()
        assert (out / rel).read_bytes() == (src / rel).read_bytes()


# ---------------------------------------------------------------------------------------------
# 4. No stale weights beside the new ones


def test_no_stale_weights_are_copied(model_store, tmp_path):
    import torch

    src = tmp_path / "src"
    src.mkdir()
    base = model_store("bert", "bin")
    shutil.copyfile(base / "config.json", src / "config.json")
    shutil.copyfile(base / "pytorch_model.bin", src / "small_pytorch_model.bin")
    out = tmp_path / "out"
    result = reinit(src, out, top_layers=1)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert not any("small_pytorch_model.bin" in w for w in result.plan.warnings)  # it is SRC

    # a safetensors model with exports and other formats beside it, and pipeline modules
    src2 = _copy(model_store("bert"), tmp_path / "src2")
    for name in ["tf_model.h5", "flax_model.msgpack", "model.gguf", "training_args.bin"]:
        (src2 / name).write_bytes(b"old weights")
    for folder in ["onnx", "openvino", "checkpoint-500"]:
        (src2 / folder).mkdir()
        (src2 / folder / "model.onnx").write_bytes(b"old export")
    (src2 / "2_Dense").mkdir()
    torch.save({"linear.weight": torch.ones(2, 2)}, src2 / "2_Dense" / "pytorch_model.bin")
    (src2 / "2_Dense" / "config.json").write_text("{}\n")
    (src2 / "adapter").mkdir()
    (src2 / "adapter" / "adapter_model.safetensors").write_bytes(b"adapter bytes")
    code, out_text, err, _ = cli("reinit", src2, tmp_path / "out2", "--top-layers", "1")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out2").iterdir()) == [
        "1_Pooling",
        "2_Dense",
        "adapter",
        "config.json",
        "model.safetensors",
        "tokenizer_config.json",
    ]
    assert (tmp_path / "out2" / "2_Dense" / "pytorch_model.bin").is_file()
    assert (tmp_path / "out2" / "adapter" / "adapter_model.safetensors").is_file()
    assert (
        "Warning: not copied into DEST, weights of the source in another name or format that "
        "would be stale beside the new ones: checkpoint-500/, flax_model.msgpack, model.gguf, "
        "onnx/, openvino/, tf_model.h5, training_args.bin"
    ) in err.splitlines()


# ---------------------------------------------------------------------------------------------
# 7. RoBERTa padding rows from `architectures` when the config has no model_type


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


# ---------------------------------------------------------------------------------------------
# 8. Inputs accepted before and refused now


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["reinit", "--top-layers", "1", "--std", "inf"],
            "Error: --std must be a finite number, got inf (reinit): fix the value",
        ),
        (
            ["drop", "-p", "*"],
            "Error: the selection drops all 74 tensors; the output would hold none ({src}): "
            "narrow -p, or add -x for what to keep",
        ),
        (
            ["drop", "-p", "cls.*", "-x", "cls.nothing.*"],
            "Error: exclude pattern matches no tensor (cls.nothing.*): closest names: "
            "cls.predictions.bias",
        ),
        (
            ["drop", "-p", "bert.*", "--strip-prefix", "bert"],
            "Error: --strip-prefix 'bert' does not end with a dot and not every name starts with "
            "'bert.' ({src}): give --strip-prefix 'bert.' to strip it where present",
        ),
    ],
)
def test_bad_arguments_are_refused(model_store, tmp_path, args, message):
    src = model_store("bert")
    code, _, err, _ = cli(args[0], src, tmp_path / "out", *args[1:])
    assert_clean_error(code, err)
    assert err.strip() == message.format(src=src)
    assert list(tmp_path.iterdir()) == []


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


def test_strip_prefix_without_the_dot_when_every_name_has_it(ddp_src, tmp_path):
    src = ddp_src
    convert(src, tmp_path / "a", strip_prefix="module")
    convert(src, tmp_path / "b", strip_prefix=["module."])
    assert tree_hash(tmp_path / "a") == tree_hash(tmp_path / "b")
    assert "bert.embeddings.word_embeddings.weight" in reference_state(tmp_path / "a")


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ("[1, 2]", "config.json holds a JSON list, not an object"),
        ('"bert"', "config.json holds a JSON str, not an object"),
        ("{not json", "config.json is not valid JSON"),
        ('{"initializer_range": "0.02"}', "config.json: initializer_range is '0.02', not a number"),
        ('{"initializer_range": -1}', "initializer_range is -1; it must be a finite number >= 0"),
        ('{"pad_token_id": 1.5}', "config.json: pad_token_id is 1.5, not an integer"),
        (
            '{"pad_token_id": 99, "vocab_size": 99}',
            "pad_token_id 99 is outside the vocabulary (vocab_size 99)",
        ),
        ('{"num_hidden_layers": "4"}', "config.json: num_hidden_layers is '4', not a layer count"),
        ('{"num_hidden_layers": -2}', "num_hidden_layers is -2, not a layer count"),
        ('{"vocab_size": true}', "vocab_size is True, not a positive integer"),
    ],
)
def test_a_broken_config_is_refused_by_every_writing_command(src_copy, tmp_path, config, problem):
    src = src_copy("bert")
    (src / "config.json").write_text(config)
    before = tree_hash(src)
    for args in (["convert"], ["drop", "-p", "cls.*"], ["reinit", "-p", "cls.*", "--dry-run"]):
        code, _, err, _ = cli(args[0], src, tmp_path / "out", *args[1:])
        assert_clean_error(code, err, problem, str(src / "config.json"), "fix config.json")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
    assert tree_hash(src) == before
    # inspect still shows the weights, with the problem as a warning
    code, out, err, _ = cli("inspect", src)
    assert code == 0 and problem in err


# ---------------------------------------------------------------------------------------------
# 9. --dry-run checks DEST exactly as a real run would


@pytest.mark.parametrize("verb", [["convert"], ["drop", "-p", "cls.*"], ["reinit", "-p", "cls.*"]])
def test_dry_run_checks_the_destination(model_store, tmp_path, verb):
    src = _copy(model_store("bert"), tmp_path / "outer" / "src")
    (tmp_path / "exists").mkdir()
    cases = [
        (tmp_path / "exists", [], "destination already exists"),
        (src / "inside", [], "destination is inside the source directory"),
        (tmp_path / "outer", ["--overwrite"], "destination contains the source checkpoint"),
        (tmp_path / "missing" / "out", [], "the destination's parent directory does not exist"),
    ]
    for dest, extra, message in cases:
        code, _, err, _ = cli(verb[0], src, dest, *verb[1:], *extra, "--dry-run")
        assert_clean_error(code, err, message)
    code, out, err, _ = cli(verb[0], src, tmp_path / "new", *verb[1:], "--dry-run")
    assert code == 0 and "nothing written" in out and not (tmp_path / "new").exists()


# ---------------------------------------------------------------------------------------------
# 10. Python API: sizes as strings, a bare string is one pattern


def test_api_accepts_size_strings_and_bare_pattern_strings(model_store, tmp_path):
    src = model_store("bert")
    result = convert(src, tmp_path / "sharded", max_shard_size="50KB")
    assert "model.safetensors.index.json" in result.written.files
    a = drop(src, tmp_path / "a", "cls.*", exclude="cls.predictions.transform.dense.*")
    b = drop(src, tmp_path / "b", ["cls.*"], exclude=["cls.predictions.transform.dense.*"])
    assert a.plan.tensors == b.plan.tensors and a.plan.count("drop") == 3
    assert a.plan.steps[0]["patterns"] == ["cls.*"]
    r = reinit(src, tmp_path / "r", "cls.predictions.transform.dense.*", dry_run=True)
    assert r.plan.count("reinit") == 2
    assert sorted(t.name for t in inspect(src, "cls.predictions.transform.dense.*").tensors) == [
        "cls.predictions.transform.dense.bias",
        "cls.predictions.transform.dense.weight",
    ]


# ---------------------------------------------------------------------------------------------
# 11. A wrapped model's checkpoint gets a hint toward --strip-prefix


def test_wrapped_model_hint_everywhere_the_user_meets_it(ddp_src, tmp_path):
    hint = "names start with 'module.' (saved from a wrapped model): pass --strip-prefix module."
    code, _, err, _ = cli("convert", ddp_src, tmp_path / "c")
    assert code == 0 and f"Warning: {hint}" in err
    code, _, err, _ = cli("reinit", ddp_src, tmp_path / "r", "--top-layers", "1")
    assert_clean_error(code, err, "no encoder layer stack found", hint)
    code, _, err, _ = cli("drop", ddp_src, tmp_path / "d", "-p", "cls.*")
    assert_clean_error(code, err, "pattern matches no tensor (cls.*)", hint)
    with pytest.raises(PatternError, match="pass --strip-prefix module"):
        drop(ddp_src, tmp_path / "d", "cls.*")
    code, _, err, _ = cli(
        "reinit", ddp_src, tmp_path / "r", "--top-layers", "1", "--strip-prefix", "module."
    )
    assert code == 0, err


# ---------------------------------------------------------------------------------------------
# 12. inspect counts each tied group once


def test_inspect_counts_tied_groups_once(model_store):
    safe = inspect(model_store("bert", "safetensors"))
    for layout in ("bin", "bin-legacy"):
        tied = inspect(model_store("bert", layout))
        assert (tied.total_params, tied.total_bytes) == (safe.total_params, safe.total_bytes)
        assert tied.to_json()["tied"] == {
            "cls.predictions.decoder.bias": "cls.predictions.bias",
            "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
        }
    assert safe.to_json()["tied"] == {}


# ---------------------------------------------------------------------------------------------
# 13. diff keeps its exit status when the reader closes the pipe


def test_diff_exit_status_survives_a_closed_pipe(tmp_path):
    def write(path: Path, offset: float) -> None:
        path.mkdir()
        n = 3000
        specs = [(f"encoder.layer.{i}.weight", "F32", (4,), 16) for i in range(n)]
        header, _ = build_header(specs, {"format": "pt"})
        data = (np.arange(n * 4, dtype=np.float32) + offset).tobytes()
        (path / "model.safetensors").write_bytes(header + data)

    write(tmp_path / "a", 0.0)
    write(tmp_path / "b", 1.0)
    for extra in ([], ["--json"]):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ckptsurgeon",
                "diff",
                str(tmp_path / "a"),
                str(tmp_path / "b"),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.readline()
        proc.stdout.close()  # like `| head -1`
        err = proc.stderr.read()
        assert proc.wait(timeout=60) == 1, err
        assert err == b""
    same = subprocess.run(
        [sys.executable, "-m", "ckptsurgeon", "diff", str(tmp_path / "a"), str(tmp_path / "a")],
        capture_output=True,
    )
    assert same.returncode == 0


def test_open_checkpoint_reports_config_problem_without_raising(src_copy):
    src = src_copy("bert")
    (src / "config.json").write_text("[]")
    ckpt = open_checkpoint(src)
    assert ckpt.config is None and ckpt.config_error is not None


def test_links_out_of_src_say_what_happened(model_store, tmp_path):
    """A config.json linked from outside SRC is left out, and the warning said SRC had no
    config.json; weights linked from outside are read, and the warning said 'not copied'."""
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(model_store("bert"), elsewhere)
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").symlink_to(elsewhere / "config.json")
    (src / "model.safetensors").symlink_to(elsewhere / "model.safetensors")
    code, out, err, _ = cli("drop", src, tmp_path / "out", "-p", "cls.*")
    assert code == 0, err
    warnings = [ln for ln in err.splitlines() if ln.startswith("Warning:") and "link" in ln]
    assert warnings == [
        "Warning: weights read through symbolic links that lead out of SRC: model.safetensors "
        f"-> {elsewhere / 'model.safetensors'}",
        "Warning: not copied, symbolic links that lead out of SRC (copy them by hand if they "
        f"belong to this model): config.json -> {elsewhere / 'config.json'}",
    ]
    assert not (tmp_path / "out" / "config.json").exists()
    assert (tmp_path / "out" / "model.safetensors").is_file()
