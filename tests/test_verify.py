"""verify: the release gate loads the output with stock transformers and checks it."""

from __future__ import annotations

import json

import pytest
from test_hardening import assert_clean_error, cli

from ckptsurgeon import apply, convert, drop, reinit
from ckptsurgeon.formats.safetensors import build_header

pytestmark = pytest.mark.roundtrip  # also under the newest transformers 4.x in CI


def test_a_good_reinit_passes_every_check(model_store, tmp_path):
    src = model_store("bert-seqcls")
    reinit(src, tmp_path / "out", top_layers=1, pooler=True)
    code, out, err, _ = cli("verify", tmp_path / "out", "--against", src, "--json")
    assert code == 0, out + err
    report = json.loads(out)
    assert report["ok"] and report["class"] == "BertForSequenceClassification"
    assert [c["check"] for c in report["checks"]] == [
        "no unexpected keys",
        "no mismatched keys",
        "nothing on the meta device",
        "missing keys as expected",
        "forward pass is finite",
        "unchanged tensors equal SRC",
    ]
    code, out, _, _ = cli("verify", tmp_path / "out")
    assert code == 0 and out.splitlines()[-1] == "BertForSequenceClassification: all checks pass"


def test_dropped_head_must_be_expected(model_store, tmp_path):
    drop(model_store("bert"), tmp_path / "out", "cls.predictions.transform.*")
    code, out, _, _ = cli("verify", tmp_path / "out")
    assert code == 1
    fails = [ln for ln in out.splitlines() if ln.startswith("FAIL")]
    assert fails == [
        "FAIL  missing keys as expected: missing but not expected: "
        "cls.predictions.transform.LayerNorm.bias, cls.predictions.transform.LayerNorm.weight, "
        "cls.predictions.transform.dense.bias, cls.predictions.transform.dense.weight"
    ]
    code, _, _, _ = cli(
        "verify", tmp_path / "out", "--expect-missing", "cls.predictions.transform.*"
    )
    assert code == 0
    code, out, _, _ = cli("verify", tmp_path / "out", "--expect-missing", "cls.*")
    assert code == 1 and "expected missing but loaded: cls.predictions.bias" in out


def test_against_catches_a_tensor_changed_behind_the_metadata(model_store, tmp_path):
    src = model_store("bert")
    steps = [
        {"op": "reinit", "patterns": ["cls.predictions.transform.*"]},
        {"op": "cast", "dtype": "bf16", "patterns": "bert.encoder.layer.0.*"},
    ]
    apply(steps, src, tmp_path / "ok")
    assert cli("verify", tmp_path / "ok", "--against", src)[0] == 0
    # an output whose weights differ from SRC in a tensor the recipe did not touch
    convert(src, tmp_path / "tampered")
    other = model_store("bert-seqcls")
    code, out, _, _ = cli(
        "verify", tmp_path / "tampered", "--against", other, "--class", "BertForMaskedLM"
    )
    assert code == 1 and "FAIL  unchanged tensors equal SRC: differ:" in out


def test_nonfinite_forward_and_load_errors(model_store, tmp_path):
    import numpy as np

    from ckptsurgeon import open_checkpoint

    src = model_store("bert")
    convert(src, tmp_path / "out")
    ckpt = open_checkpoint(tmp_path / "out")
    # overwrite one weight with NaN, keeping the file valid
    info = next(t for t in ckpt.tensors if t.name == "bert.embeddings.LayerNorm.weight")
    with open(info.file, "r+b") as fh:
        fh.seek(info.offset)
        fh.write(np.full(info.shape, np.nan, dtype=np.float32).tobytes())
    code, out, _, _ = cli("verify", tmp_path / "out")
    assert code == 1 and "FAIL  forward pass is finite: " in out
    code, _, err, _ = cli("verify", tmp_path / "out", "--class", "NoSuchModel")
    assert_clean_error(code, err, "has no model class 'NoSuchModel'", "give another --class")
    (tmp_path / "bare").mkdir()
    header, _ = build_header([("w", "F32", (1,), 4)], {"format": "pt"})
    (tmp_path / "bare" / "model.safetensors").write_bytes(header + b"\0" * 4)
    (tmp_path / "bare" / "config.json").write_text('{"model_type": "bert"}')
    code, _, err, _ = cli("verify", tmp_path / "bare")
    assert_clean_error(code, err, "config.json names no model class", "--class")


def test_without_transformers_the_error_says_what_to_install(model_store, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_transformers(name, *args, **kwargs):
        if name == "transformers":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_transformers)
    code, _, err, _ = cli("verify", model_store("bert"))
    assert err.strip() == (
        "Error: verify needs transformers, which is not installed (transformers): "
        "pip install 'ckptsurgeon[verify]'"
    )
    assert code == 2


def test_a_path_that_does_not_exist_is_said_at_once_and_never_sent_to_the_hub(tmp_path):
    """``verify /no/such/dir`` said 'config.json names no model class'; with --class it tried
    the Hub with retries (23 s)."""
    import time

    missing = tmp_path / "no" / "such" / "dir"
    for extra in ([], ["--class", "BertModel"]):
        start = time.monotonic()
        code, _, err, _ = cli("verify", missing, *extra)
        assert time.monotonic() - start < 2
        assert_clean_error(code, err, f"no such file or directory ({missing})")
    (tmp_path / "file.safetensors").write_bytes(b"")
    code, _, err, _ = cli("verify", tmp_path / "file.safetensors")
    assert_clean_error(code, err, "not a directory: verify loads a model directory")
    empty = tmp_path / "empty"  # exists, holds nothing: local files only, no Hub lookup
    empty.mkdir()
    start = time.monotonic()
    code, _, err, _ = cli("verify", empty, "--class", "BertModel")
    assert time.monotonic() - start < 5
    assert_clean_error(code, err, "from_pretrained cannot load it as BertModel")


def test_quiet_verify_prints_nothing_on_stderr(model_store, tmp_path):
    """``verify -q`` showed transformers' loading bar and load report."""
    import subprocess
    import sys

    drop(model_store("bert"), tmp_path / "out", "cls.predictions.transform.*")
    cmd = [sys.executable, "-m", "ckptsurgeon", "verify", str(tmp_path / "out")]
    loud = subprocess.run(cmd, capture_output=True, text=True)
    assert loud.returncode == 1 and loud.stderr.strip()  # transformers' own load report
    quiet = subprocess.run([*cmd, "-q"], capture_output=True, text=True)
    assert quiet.returncode == 1 and quiet.stderr == ""
    assert quiet.stdout == loud.stdout and "FAIL  missing keys as expected" in quiet.stdout
