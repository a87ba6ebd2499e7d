"""What of SRC's folder is copied beside the weights: links out of SRC, loops, special files,
the Hugging Face cache's blobs, and never stale weights in another name or format."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from test_hardening import cli

from ckptsurgeon import reinit


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


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
