"""Clones: every tensor copied unchanged keeps its source offset modulo 4096, so that on a
copy-on-write file system (XFS with reflink, btrfs) its blocks are shared, not written.

The layout tests run anywhere. The XFS tests loop-mount a small XFS image (root, mkfs.xfs and a
loop device needed; they skip cleanly without) and measure with statvfs what each command
allocates; the same command's output on the ordinary file system of tmp_path must be the same
bytes."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import ckptsurgeon
from ckptsurgeon.cli import main
from ckptsurgeon.dtypes import nbytes_of
from ckptsurgeon.formats.checkpoint import open_checkpoint
from ckptsurgeon.formats.safetensors import read_header

BLOCK = 4096


def _bert(path: Path, hidden: int = 768, layers: int = 2, vocab: int = 30522, **kw: Any) -> Path:
    """A BERT of bert-base width written by save_pretrained (the layout users hold)."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.BertConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        intermediate_size=4 * hidden,
        vocab_size=vocab,
    )
    tf.BertForMaskedLM(cfg).save_pretrained(path, **kw)
    return path


def _offsets(folder: Path) -> dict[str, tuple[str, int]]:
    """Every tensor's (file name, absolute offset) in a safetensors folder."""
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        h = read_header(f)
        for e in h.entries:
            out[e.name] = (f.name, h.data_start + e.begin)
    return out


def _hashes(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


JOBS: dict[str, list[str]] = {
    "drop": ["drop", "-p", "cls.*"],
    "rename": ["rename", "--sub", "^bert\\.", "encoder_model."],
    "convert": ["convert", "--max-shard-size", "80MB"],
    "reinit": ["reinit", "--top-layers", "1", "--rules", "bert"],
    # a gap in the middle: small tensors from later fill it so the rest stays aligned
    "layers": ["layers", "--drop", "0"],
    "drop-middle": ["drop", "-p", "bert.encoder.layer.0.attention.self.*"],
}
RECIPE = (
    "steps:\n  - {op: drop, patterns: ['cls.*']}\n  - {op: reinit, top_layers: 1, rules: bert}\n"
)


def _run(job: str, src: Path, dest: Path) -> dict[str, Any]:
    if job == "recipe":
        recipe = dest.parent / f"{dest.name}.yaml"
        recipe.write_text(RECIPE)
        argv = ["apply", str(recipe), str(src), str(dest)]
    else:
        argv = [JOBS[job][0], str(src), str(dest), *JOBS[job][1:]]
    r = CliRunner().invoke(main, [*argv, "--json", "-q"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def bert_base_width(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _bert(tmp_path_factory.mktemp("width") / "bert")


@pytest.mark.parametrize("job", [*JOBS, "recipe"])
def test_copied_tensors_keep_their_offset_modulo_the_block(bert_base_width, tmp_path, job):
    out = tmp_path / job
    result = _run(job, bert_base_width, out)
    src, got = _offsets(bert_base_width), _offsets(out)
    rows = {row["name"]: row for row in result["tensors"]}  # the tensors that changed
    sizes = {t.name: t.nbytes for t in open_checkpoint(out).tensors}
    aligned = unaligned = 0
    for name, (_, offset) in got.items():
        row = rows.get(name, {"action": "keep"})
        if row["action"] not in ("keep", "rename") or sizes[name] < 64 << 10:
            continue
        was = row.get("renamed_from", name)
        if (offset - src[was][1]) % BLOCK == 0:
            aligned += sizes[name]
        else:
            unaligned += sizes[name]
    if job in ("layers", "drop-middle"):
        # a gap in the middle: small tensors fill it; the last head tensor may starve
        assert aligned >= 0.97 * (aligned + unaligned), (aligned, unaligned)
    else:  # every large copied tensor
        assert unaligned == 0 and aligned > 0


def test_the_layout_is_still_a_valid_dense_safetensors_file(bert_base_width, tmp_path):
    """Header padded with spaces, tensors back to back from the first data byte: safetensors
    itself reads it, and every tensor equals the source's."""
    from safetensors.numpy import load_file

    _run("drop", bert_base_width, tmp_path / "out")
    f = tmp_path / "out" / "model.safetensors"
    raw = f.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert n % 8 == 0 and raw[8 : 8 + n].rstrip(b" ").endswith(b"}")
    h = read_header(f)
    ends = sorted((e.begin, e.end) for e in h.entries)
    assert ends[0][0] == 0 and all(a[1] == b[0] for a, b in itertools.pairwise(ends))
    assert h.data_start + ends[-1][1] == len(raw)
    got, want = load_file(str(f)), load_file(str(bert_base_width / "model.safetensors"))
    for name, value in got.items():
        assert (value == want[name]).all(), name


def test_max_shard_size_source_keeps_the_source_files(tmp_path):
    src = _bert(tmp_path / "sharded", hidden=64, layers=4, vocab=3000, max_shard_size="300KB")
    index = json.loads((src / "model.safetensors.index.json").read_text())
    shards: dict[str, set[str]] = {}
    for name, shard in index["weight_map"].items():
        shards.setdefault(shard, set()).add(name)
    assert len(shards) >= 3
    dropped = "bert.encoder.layer.3.output.dense.weight"
    r = CliRunner().invoke(
        main,
        ["drop", str(src), str(tmp_path / "out"), "-p", dropped, "--max-shard-size", "source"],
    )
    assert r.exit_code == 0, r.output
    out = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    got: dict[str, set[str]] = {}
    for name, shard in out["weight_map"].items():
        got.setdefault(shard, set()).add(name)
    assert sorted(got) == sorted(shards)  # the same file names
    for shard, names in shards.items():
        assert got[shard] == names - {dropped}, shard
    # the API takes it too
    res = ckptsurgeon.convert(src, tmp_path / "api", max_shard_size="source")
    assert res.written is not None and len(res.written.files) == len(shards) + 1


def test_the_default_keeps_a_sharded_safetensors_sources_files(tmp_path):
    """``auto`` (the default): never two source files in one output file, so that each output
    file's header can start where its copied tensors keep their source offsets; an explicit size
    packs as asked, and other sources are split past 5GB alone."""
    from ckptsurgeon.run.layout import AUTO_SHARDS, OutTensor, shard_groups, shard_limit

    src = _bert(tmp_path / "sharded", hidden=64, layers=4, vocab=3000, max_shard_size="300KB")
    index = json.loads((src / "model.safetensors.index.json").read_text())
    shards: dict[str, set[str]] = {}
    for name, shard in index["weight_map"].items():
        shards.setdefault(shard, set()).add(name)
    r = CliRunner().invoke(main, ["drop", str(src), str(tmp_path / "out"), "-p", "cls.*"])
    assert r.exit_code == 0, r.output
    out = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    got: dict[str, set[str]] = {}
    for name, shard in out["weight_map"].items():
        got.setdefault(shard, set()).add(name)
    kept = [names - {n for n in names if n.startswith("cls.")} for names in shards.values()]
    assert sorted(map(sorted, got.values())) == sorted(map(sorted, filter(None, kept)))
    r = CliRunner().invoke(
        main,
        ["drop", str(src), str(tmp_path / "packed"), "-p", "cls.*", "--max-shard-size", "5GB"],
    )
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "packed").glob("*.safetensors")) == [
        "model.safetensors"
    ]
    assert shard_limit("auto") == shard_limit(" AUTO ") == AUTO_SHARDS
    # past 5GB a source file is split too; tensors from .bin shards are packed as before
    big = [OutTensor(f"t{i}", "F32", (10**9,), 4 * 10**9, home="a.safetensors") for i in (0, 1)]
    small = OutTensor("s", "F32", (1,), 4, home="b.safetensors")
    assert [len(g) for g in shard_groups([*big, small], tmp_path / "d", AUTO_SHARDS)] == [1, 1, 1]
    bins = [OutTensor(f"b{i}", "F32", (1,), 4, home=f"pytorch_model-{i}.bin") for i in (0, 1)]
    assert [len(g) for g in shard_groups(bins, tmp_path / "d", AUTO_SHARDS)] == [2]


# ---------------------------------------------------------------------------------------------
# On XFS with reflink


def _mount_xfs(root: Path) -> Path | None:
    if os.geteuid() != 0 or shutil.which("mkfs.xfs") is None or shutil.which("mount") is None:
        return None
    image, mnt = root / "xfs.img", root / "mnt"
    mnt.mkdir()
    with open(image, "wb") as fh:
        fh.truncate(1 << 30)  # sparse
    try:
        subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    except (subprocess.CalledProcessError, OSError):
        return None
    return mnt


@pytest.fixture(scope="module")
def xfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    mnt = _mount_xfs(tmp_path_factory.mktemp("xfs"))
    if mnt is None:
        pytest.skip("needs root, mkfs.xfs (xfsprogs) and a loop device")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def _free(path: Path) -> int:
    """Free bytes once they stop changing (XFS frees deleted files' blocks in the background)."""
    import time

    last = -1
    for _ in range(50):
        os.sync()
        st = os.statvfs(path)
        now = st.f_bfree * st.f_frsize
        if now == last:
            return now
        last = now
        time.sleep(0.1)
    return last


@pytest.fixture(scope="module")
def xfs_bert(xfs: Path) -> Path:
    return _bert(xfs / "bert")


@pytest.mark.parametrize("job", [*JOBS, "recipe"])
def test_on_xfs_only_changed_bytes_are_allocated(xfs, xfs_bert, tmp_path, job):
    out = xfs / f"out-{job}"
    before = _free(xfs)
    result = _run(job, xfs_bert, out)
    allocated = before - _free(xfs)
    total = result["total_bytes"]
    changed = sum(
        nbytes_of(t["dtype"], tuple(t["shape"]))
        for t in result["tensors"]
        if t["action"] not in ("keep", "rename", "drop")
    )
    assert allocated <= changed + 0.02 * total, (allocated, changed, total)
    assert result["cloned_bytes"] >= total - changed - 0.02 * total
    assert result["written_bytes"] == total - result["cloned_bytes"]
    # the same command on the ordinary file system: the same bytes, nothing cloned
    plain = _run(job, xfs_bert, tmp_path / job)
    assert plain["cloned_bytes"] == 0
    assert _hashes(tmp_path / job) == _hashes(out)
    shutil.rmtree(out)


def test_on_xfs_a_sharded_source_is_cloned_with_the_default_shards(xfs, tmp_path):
    """A sharded SRC (save_pretrained's shards), no --max-shard-size: each output file holds one
    source file's tensors at their offsets, so dropping the head allocates next to nothing."""
    src = _bert(xfs / "sharded", max_shard_size="60MB")
    assert len(list(src.glob("*.safetensors"))) >= 3
    out = xfs / "sharded-out"
    before = _free(xfs)
    result = _run("drop", src, out)
    allocated = before - _free(xfs)
    assert allocated <= 0.02 * result["total_bytes"], (allocated, result["total_bytes"])
    assert result["cloned_bytes"] >= 0.98 * result["total_bytes"]
    _run("drop", src, tmp_path / "plain")
    assert _hashes(tmp_path / "plain") == _hashes(out)
    shutil.rmtree(out)
    shutil.rmtree(src)


def test_the_summary_says_what_was_cloned(xfs, xfs_bert):
    r = CliRunner().invoke(main, ["drop", str(xfs_bert), str(xfs / "summary"), "-p", "cls.*"])
    assert r.exit_code == 0, r.output
    assert "; 152.1 MB: cloned 152.0 MB, wrote 8.2 KB)" in r.output
    shutil.rmtree(xfs / "summary")


def test_a_tiny_checkpoint_on_xfs_is_whole(xfs, model_store, tmp_path):
    """The probe clones a block into the empty output and cuts it off: a file smaller than
    a block must not keep it."""
    src = xfs / "tiny"
    shutil.copytree(model_store("bert"), src)
    _run("drop", src, xfs / "tiny-out")
    _run("drop", src, tmp_path / "tiny-out")
    assert _hashes(xfs / "tiny-out") == _hashes(tmp_path / "tiny-out")
    assert open_checkpoint(xfs / "tiny-out").names == open_checkpoint(tmp_path / "tiny-out").names
