"""The safetensors header (golden bytes, every validation), index files, torch files, layouts."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import reference_state

from ckptsurgeon import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    UnsafePickleError,
    UnsupportedFormatError,
    open_checkpoint,
)
from ckptsurgeon.formats.safetensors import build_header


def write_raw(
    path: Path, header: object, data: bytes = b"", *, raw_header: bytes | None = None
) -> Path:
    body = raw_header if raw_header is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + data)
    return path


def test_golden_header_bytes():
    header, offsets = build_header(
        [("b", "F32", (2,), 8), ("a", "I8", (3,), 3)], {"format": "pt", "z": "1"}
    )
    expected_json = (
        b'{"__metadata__":{"format":"pt","z":"1"},'
        b'"a":{"data_offsets":[8,11],"dtype":"I8","shape":[3]},'
        b'"b":{"data_offsets":[0,8],"dtype":"F32","shape":[2]}}'
    )
    padded = expected_json + b" " * (-len(expected_json) % 8)
    assert header == struct.pack("<Q", len(padded)) + padded
    assert len(header) % 8 == 0
    assert offsets == {"b": (0, 8), "a": (8, 11)}


def test_our_header_reads_with_official_loader(tmp_path):
    from safetensors.torch import load_file

    header, _ = build_header([("x", "F32", (2,), 8)], {"format": "pt"})
    p = tmp_path / "x.safetensors"
    p.write_bytes(header + struct.pack("<2f", 1.5, -2.0))
    assert load_file(str(p))["x"].tolist() == [1.5, -2.0]


OK_ENTRY = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
BAD_HEADERS = [
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "data is truncated"),
    ({"x": OK_ENTRY}, b"\0" * 12, "4 trailing bytes after the last tensor"),
    ({"x": {"shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "tensor 'x' has no dtype"),
    ({"x": {**OK_ENTRY, "dtype": "F17"}}, b"\0" * 8, "unknown dtype 'F17'"),
    (
        {"x": {**OK_ENTRY, "shape": [3]}},
        b"\0" * 8,
        "is 8 bytes but dtype F32 and shape [3] need 12",
    ),
    ({"x": {**OK_ENTRY, "shape": [2**40, 2**40]}}, b"\0" * 8, "is too large"),
    ({"x": {**OK_ENTRY, "shape": [-1]}}, b"\0" * 8, "invalid shape"),
    (
        {"x": OK_ENTRY, "y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
        b"\0" * 12,
        "overlaps the previous tensor",
    ),
    (
        {"x": OK_ENTRY, "y": {"dtype": "F32", "shape": [1], "data_offsets": [12, 16]}},
        b"\0" * 16,
        "leaves a gap",
    ),
    ({"x": OK_ENTRY, "__metadata__": {"format": 1}}, b"\0" * 8, "__metadata__ must map strings"),
    ([1, 2], b"", "header is a JSON list, not an object"),
    ({"x": [1]}, b"", "entry 'x' is not an object"),
]


@pytest.mark.parametrize(("header", "data", "message"), BAD_HEADERS)
def test_invalid_safetensors_refused(tmp_path, header, data, message):
    p = write_raw(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(CorruptCheckpointError, match=re_escape(message)) as err:
        open_checkpoint(p)
    assert str(p) in str(err.value)
    assert str(err.value).startswith("not a valid safetensors file: ")


def re_escape(s: str) -> str:
    import re

    return re.escape(s)


def test_raw_header_failures(tmp_path):
    cases = [
        (b'{"x": 1', "header is not valid JSON"),
        (b"\xff\xfe{}", "header is not UTF-8"),
        (
            b'{"x": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}, "x": {}}',
            "duplicate name 'x'",
        ),
    ]
    for raw, message in cases:
        p = write_raw(tmp_path / "bad.safetensors", None, raw_header=raw)
        with pytest.raises(CorruptCheckpointError, match=re_escape(message)):
            open_checkpoint(p)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(CorruptCheckpointError, match="shorter than the 8-byte length prefix"):
        open_checkpoint(empty)
    big = tmp_path / "big.safetensors"
    big.write_bytes(struct.pack("<Q", 200_000_000) + b"{}")
    with pytest.raises(CorruptCheckpointError, match="exceeds the 100 MB limit"):
        open_checkpoint(big)
    long = tmp_path / "long.safetensors"
    long.write_bytes(struct.pack("<Q", 5000) + b"{}")
    with pytest.raises(CorruptCheckpointError, match="runs past the end of the 10-byte file"):
        open_checkpoint(long)


def test_directory_named_model_safetensors(tmp_path):
    (tmp_path / "m" / "model.safetensors").mkdir(parents=True)
    with pytest.raises(
        CorruptCheckpointError, match="expected a safetensors file but found a directory"
    ):
        open_checkpoint(tmp_path / "m")


def test_missing_and_empty(tmp_path):
    with pytest.raises(
        CheckpointNotFoundError, match=r"no such file or directory \(.*nope\): check the path"
    ):
        open_checkpoint(tmp_path / "nope")
    d = tmp_path / "d"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "vocab.txt").write_text("")
    with pytest.raises(
        CheckpointNotFoundError,
        match=r"no weights found \(the directory holds: config.json, vocab.txt\)",
    ):
        open_checkpoint(d)
    junk = tmp_path / "junk.xyz"
    junk.write_bytes(b"hello world, not a checkpoint")
    with pytest.raises(UnsupportedFormatError, match="unrecognised checkpoint format"):
        open_checkpoint(junk)


def _index(tmp_path: Path, weight_map: object, name: str = "model.safetensors.index.json") -> Path:
    d = tmp_path / "idx"
    d.mkdir(exist_ok=True)
    header, _ = build_header([("a", "F32", (1,), 4)], {"format": "pt"})
    (d / "model-00001-of-00001.safetensors").write_bytes(header + b"\0" * 4)
    p = d / name
    p.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return p


@pytest.mark.parametrize(
    ("weight_map", "message"),
    [
        ({"a": "/etc/passwd"}, "unsafe or invalid shard name '/etc/passwd': absolute path"),
        ({"a": "../x.safetensors"}, "contains '..'"),
        ({"a": "C:model.safetensors"}, "absolute path"),
        ({"a": "sub/model.safetensors"}, "contains a directory separator"),
        ({"a": "model-00001-of-00001.bin"}, "has the wrong extension"),
        (
            {"a": "model-00001-of-00001.safetensors", "b": "model-00001-of-00001.safetensors"},
            "'b' is listed in the index but absent",
        ),
        ({}, "index lists no tensors"),
    ],
)
def test_bad_index(tmp_path, weight_map, message):
    p = _index(tmp_path, weight_map)
    with pytest.raises(CorruptCheckpointError, match=re_escape(message)):
        open_checkpoint(p)


def test_index_shard_missing_and_unlisted(tmp_path):
    p = _index(tmp_path, {"a": "model-00002-of-00002.safetensors"})
    with pytest.raises(
        CheckpointNotFoundError,
        match="shard 'model-00002-of-00002.safetensors' listed in the index is missing",
    ):
        open_checkpoint(p)
    header, _ = build_header([("a", "F32", (1,), 4), ("extra", "F32", (1,), 4)], {"format": "pt"})
    (p.parent / "model-00001-of-00001.safetensors").write_bytes(header + b"\0" * 8)
    p.write_text(
        json.dumps({"metadata": {}, "weight_map": {"a": "model-00001-of-00001.safetensors"}})
    )
    with pytest.raises(
        CorruptCheckpointError, match="'extra' is in shard .* but the index does not list it"
    ):
        open_checkpoint(p.parent)
    p.write_text("{not json")
    with pytest.raises(CorruptCheckpointError, match="index is not valid JSON"):
        open_checkpoint(p)
    p.write_text('{"metadata": {}}')
    with pytest.raises(CorruptCheckpointError, match="index has no 'weight_map' object"):
        open_checkpoint(p)


class Evil:
    def __reduce__(self):
        return (Path.write_text, (Path(MARKER), "pwned"))


MARKER = "/tmp/ckptsurgeon-test-marker-should-not-exist"


def test_unsafe_pickle_refused_and_not_executed(tmp_path):
    Path(MARKER).unlink(missing_ok=True)
    for fmt in (True, False):
        p = tmp_path / f"evil-{fmt}.bin"
        torch.save({"w": torch.zeros(2), "x": Evil()}, p, _use_new_zipfile_serialization=fmt)
        Path(MARKER).unlink(missing_ok=True)  # torch.save does not run it, but be sure
        with pytest.raises(
            UnsafePickleError,
            match=r"refused to unpickle: .*\(.*evil-.*\.bin\): this file needs code beyond plain tensors; it was not executed",
        ):
            open_checkpoint(p)
        assert not Path(MARKER).exists()


def test_torch_file_failures(tmp_path):
    p = tmp_path / "notpickle.bin"
    p.write_bytes(b"this is text")
    with pytest.raises(UnsupportedFormatError, match="neither a zip archive nor a pickle"):
        open_checkpoint(p)
    good = tmp_path / "good.bin"
    torch.save({"w": torch.zeros(1000)}, good)
    data = bytearray(good.read_bytes())
    corrupt = tmp_path / "corrupt.bin"
    corrupt.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(
        CorruptCheckpointError, match=r"\(.*corrupt.bin\): re-download or re-export the file"
    ):
        open_checkpoint(corrupt)
    lst = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], lst)
    with pytest.raises(
        UnsupportedFormatError, match="the file holds a list, not a state dict of tensors"
    ):
        open_checkpoint(lst)


def test_wrapped_and_prefixed_state_dicts(tmp_path):
    for key in ("state_dict", "model"):
        p = tmp_path / f"{key}.pt"
        torch.save({key: {"module.w": torch.ones(2)}, "step": 5}, p)
        ckpt = open_checkpoint(p)
        assert ckpt.names == ["module.w"]
        assert any(f"under key {key!r}" in n for n in ckpt.notes)


def test_listing_safetensors_does_not_import_torch(model_store):
    src = model_store("bert", "safetensors-sharded")
    code = (
        "import sys, ckptsurgeon.cli\n"
        "from ckptsurgeon import inspect\n"
        f"info = inspect({str(src)!r})\n"
        "assert len(info.tensors) == 74, len(info.tensors)\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
        "assert 'numpy' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_directory_prefers_safetensors(tmp_path, model_store):
    import shutil

    d = tmp_path / "both"
    shutil.copytree(model_store("bert", "bin"), d)
    shutil.copy(model_store("bert", "safetensors") / "model.safetensors", d)
    ckpt = open_checkpoint(d)
    assert ckpt.format == "safetensors" and ckpt.files == [d / "model.safetensors"]


def test_zip_bin_tensors_are_read_from_the_file(model_store):
    """Zip .bin tensors get file offsets (copied in the kernel); legacy ones go through torch."""

    for layout, has_offsets in (("bin", True), ("bin-sharded", True), ("bin-legacy", False)):
        ckpt = open_checkpoint(model_store("bert", layout))
        assert all((t.offset is not None) == has_offsets for t in ckpt.tensors), layout
        source = reference_state(model_store("bert", layout))
        with ckpt.reader() as r:
            for t in ckpt.tensors:
                assert (
                    r.read(t)
                    == source[t.name].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                )


def test_non_contiguous_tensor_in_bin_is_read_through_torch(tmp_path):
    w = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    p = tmp_path / "nc.bin"
    torch.save({"t": w.t(), "w": w}, p)
    ckpt = open_checkpoint(p)
    by = {t.name: t for t in ckpt.tensors}
    assert by["t"].offset is None and by["w"].offset is not None
    with ckpt.reader() as r:
        assert r.read(by["t"]) == w.t().contiguous().numpy().tobytes()
        assert r.read(by["w"]) == w.numpy().tobytes()


@pytest.mark.slow
def test_bin_conversion_does_not_page_in_the_checkpoint(tmp_path):
    """A 400 MB .bin converts with little more than torch's own footprint."""
    big = tmp_path / "big"
    big.mkdir()
    torch.save(
        {f"layer.{i}.weight": torch.ones(2500, 10000) for i in range(4)}, big / "pytorch_model.bin"
    )
    from conftest import peak_rss_mib

    _, base = peak_rss_mib([sys.executable, "-c", "import torch, numpy"])
    rc, rss = peak_rss_mib([sys.executable, "-m", "ckptsurgeon", "convert", big, tmp_path / "o"])
    assert rc == 0
    assert rss < base + 120, (rss, base)


def test_a_safetensors_header_length_starting_with_0x80_is_not_a_pickle(tmp_path):
    """Files with no known extension are sniffed; a header length whose low byte is 0x80 (the
    pickle protocol opcode) must still read as safetensors."""
    from ckptsurgeon.formats.safetensors import build_header

    for pad in range(0, 64):
        header, _ = build_header([("w", "F32", (1,), 4)], {"format": "pt", "x": "y" * pad})
        if header[0] == 0x80:
            break
    else:  # pragma: no cover
        raise AssertionError("no padding gave a 0x80 length")
    path = tmp_path / "weights.tmp"
    path.write_bytes(header + b"\0" * 4)
    ckpt = open_checkpoint(path)
    assert ckpt.format == "safetensors" and ckpt.names == ["w"]


@pytest.mark.parametrize("layout", ["safetensors", "bin"])
def test_read_into_fills_any_window_of_a_tensor(model_store, layout):
    """merge-lora reads tensors into reused buffers: every window equals the tensor's bytes."""
    from ckptsurgeon.formats.checkpoint import open_checkpoint

    ckpt = open_checkpoint(model_store("bert", layout))
    info = max(ckpt.tensors, key=lambda t: t.nbytes)
    with ckpt.reader() as reader:
        whole = reader.read(info)
        for start, n in [(0, info.nbytes), (0, 5), (7, 100), (info.nbytes - 9, 9)]:
            buf = bytearray(n)
            reader.read_into(info, memoryview(buf), start)
            assert bytes(buf) == whole[start : start + n], (start, n)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_open_checkpoint_reports_config_problem_without_raising(src_copy):
    src = src_copy("bert")
    (src / "config.json").write_text("[]")
    ckpt = open_checkpoint(src)
    assert ckpt.config is None and ckpt.config_error is not None
