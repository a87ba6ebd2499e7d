"""Hostile and broken inputs, faults mid-write, limits: nothing executed, lost or half-written."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import peak_rss_mib
from hypothesis import given, settings
from hypothesis import strategies as st
from test_format_and_reader import BAD_HEADERS, write_raw

from ckptsurgeon import CorruptCheckpointError, apply, convert, drop, open_checkpoint, reinit
from ckptsurgeon.cli import main
from ckptsurgeon.dtypes import DTYPES, nbytes_of
from ckptsurgeon.formats.safetensors import build_header
from ckptsurgeon.plan import initial_plan
from ckptsurgeon.run.execute import execute


def signals_as_usual() -> None:
    """In a child about to receive signals: SIGINT, SIGTERM and SIGHUP at their defaults. A test
    run started in the background by a shell without job control inherits SIGINT ignored (and
    nohup SIGHUP), which the command rightly keeps: the signal tests would test nothing."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


def cli(*args: object):
    r = CliRunner().invoke(main, [str(a) for a in args])
    return r.exit_code, r.stdout, r.stderr, r.exception


def tree_hash(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(Path(path).rglob("*")) if Path(path).is_dir() else [Path(path)]:
        if p.is_file():
            h.update(str(p.relative_to(path) if Path(path).is_dir() else p.name).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if "ckptsurgeon" in p.name)


def assert_clean_error(code: int, stderr: str, *needles: str) -> None:
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("Error: ") and not lines[0].startswith("Error: unexpected"), stderr
    for needle in needles:
        assert needle in lines[0], (needle, stderr)


@pytest.mark.parametrize(("header", "data", "message"), BAD_HEADERS)
def test_bad_safetensors_cli_exit_2_nothing_written(tmp_path, header, data, message):
    src = write_raw(tmp_path / "bad.safetensors", header, data)
    before = tree_hash(src)
    out = tmp_path / "out"
    out.mkdir()
    for cmd in (
        ["convert", src, out / "x"],
        ["inspect", src],
        ["drop", src, out / "y", "-p", "*"],
        ["diff", src, src],
    ):
        code, _, err, _ = cli(*cmd)
        assert_clean_error(code, err, str(src), message)
    assert list(out.iterdir()) == []
    assert tree_hash(src) == before


# ---------------------------------------------------------------------------------------------
# fuzzing: every outcome is a correct read or a clean error


def _mutations(data: bytes, rng: random.Random, n: int) -> list[bytes]:
    out = []
    header_len = int.from_bytes(data[:8], "little") + 8 if len(data) > 8 else len(data)
    for _ in range(n):
        kind = rng.choice(["flip", "flip_header", "truncate", "edit_number", "insert", "zero_run"])
        b = bytearray(data)
        if kind == "flip":
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif kind == "flip_header":
            i = rng.randrange(min(header_len, len(b)))
            b[i] ^= 1 << rng.randrange(8)
        elif kind == "truncate":
            b = b[: rng.randrange(len(b))]
        elif kind == "edit_number":
            digits = [i for i in range(8, min(header_len, len(b))) if chr(b[i]).isdigit()]
            if digits:
                i = rng.choice(digits)
                b[i] = ord(str(rng.randrange(10)))
        elif kind == "insert":
            i = rng.randrange(len(b))
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
        else:
            i = rng.randrange(len(b))
            b[i : i + 64] = bytes(min(64, len(b) - i))
        out.append(bytes(b))
    return out


@pytest.mark.parametrize(
    ("layout", "cases"), [("safetensors", 160), ("bin", 60), ("bin-legacy", 40)]
)
def test_fuzz_mutated_checkpoints(model_store, tmp_path, layout, cases):
    src_dir = model_store("bert", layout)
    weights = next(p for p in src_dir.iterdir() if p.suffix in (".safetensors", ".bin"))
    rng = random.Random(f"fuzz-{layout}")
    outcomes = {"ok": 0, "error": 0}
    for i, blob in enumerate(_mutations(weights.read_bytes(), rng, cases)):
        f = tmp_path / f"m{i}{weights.suffix}"
        f.write_bytes(blob)
        dest = tmp_path / f"out{i}.safetensors"
        for cmd in (["inspect", f, "--stats", "--json"], ["convert", f, dest]):
            code, out, err, exc = cli(*cmd)
            assert exc is None or isinstance(exc, SystemExit), (i, cmd, repr(exc))
            if code == 0:
                outcomes["ok"] += 1
            else:
                assert_clean_error(code, err, str(f))
                outcomes["error"] += 1
        if dest.exists():
            # whatever was accepted converts to a file that reads back with the official loader
            from safetensors import safe_open

            with safe_open(str(dest), "np") as fh:
                assert sorted(fh.keys()) == sorted(open_checkpoint(dest).names)
        assert leftovers(tmp_path) == []
        f.unlink()
    assert outcomes["error"] > 0


# ---------------------------------------------------------------------------------------------
# faults while writing


def _kill_during_write(cmd: list[str], tmp: Path, delay: float) -> None:
    """Start ``cmd``, wait until its temp output appears, wait ``delay`` more, SIGKILL it."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while proc.poll() is None and not tmp.exists() and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _synthetic(path: Path, n_tensors: int, elems: int, seed: int = 0) -> Path:
    """A safetensors directory of random F32 data with BERT-like names, written by hand."""
    path.mkdir(parents=True)
    rng = random.Random(seed)
    specs = [
        (f"encoder.layer.{i}.dense.weight", "F32", (elems // 1000, 1000), elems * 4)
        for i in range(n_tensors)
    ]
    header, _ = build_header(specs, {"format": "pt"})
    with open(path / "model.safetensors", "wb") as fh:
        fh.write(header)
        for _ in specs:
            fh.write(rng.randbytes(elems * 4))
    config = {"model_type": "bert", "num_hidden_layers": n_tensors}
    (path / "config.json").write_text(json.dumps(config) + "\n")
    return path


@pytest.mark.slow
def test_sigkill_at_random_points_leaves_nothing_half_written(tmp_path):
    src = _synthetic(tmp_path / "src", 12, 8_000_000)  # 384 MB
    src_hash = tree_hash(src)
    out = tmp_path / "out"
    out.mkdir()
    dest = out / "dest"
    cmd = [
        sys.executable,
        "-m",
        "ckptsurgeon",
        "convert",
        str(src),
        str(dest),
        "--max-shard-size",
        "100MB",
    ]
    rng = random.Random(1)
    killed_mid_write = 0
    for _ in range(8):
        _kill_during_write(cmd, out / ".dest.ckptsurgeon-tmp", rng.uniform(0, 0.3))
        if dest.exists():  # finished before the kill: must be complete
            assert open_checkpoint(dest).total_bytes == 12 * 32_000_000
            shutil.rmtree(dest)
        else:
            killed_mid_write += 1
        # SIGKILL leaves the temporary and the lock file (not the lock: the kernel drops it)
        assert set(leftovers(out)) <= {".dest.ckptsurgeon-tmp", ".dest.ckptsurgeon-lock"}
    assert killed_mid_write > 0
    subprocess.run(cmd, check=True, capture_output=True)
    assert leftovers(out) == []
    assert open_checkpoint(dest).total_bytes == 12 * 32_000_000
    assert tree_hash(src) == src_hash

    # with --overwrite: DEST is always the previous output or the complete new one
    previous = tree_hash(dest)
    overwrite = [
        sys.executable,
        "-m",
        "ckptsurgeon",
        "reinit",
        str(src),
        str(dest),
        "--overwrite",
        "-p",
        "encoder.layer.0.*",
        "--seed",
        "5",
    ]
    subprocess.run(overwrite, check=True, capture_output=True)
    new = tree_hash(dest)
    shutil.rmtree(dest)
    subprocess.run(cmd, check=True, capture_output=True)
    assert tree_hash(dest) == previous
    for _ in range(6):
        _kill_during_write(overwrite, out / ".dest.ckptsurgeon-tmp", rng.uniform(0, 0.4))
        assert tree_hash(dest) in (previous, new)
        assert set(leftovers(out)) <= {
            ".dest.ckptsurgeon-tmp",
            ".dest.ckptsurgeon-old",
            ".dest.ckptsurgeon-lock",
        }
    assert tree_hash(src) == src_hash


@contextlib.contextmanager
def tmpfs(path: Path, size: str, readonly: bool = False):
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if readonly else "")
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True
    )
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def test_disk_full_real_tmpfs(model_store, tmp_path):
    src = model_store("bert")
    before = tree_hash(src)
    with tmpfs(tmp_path / "small", "64k") as small:
        code, _, err, _ = cli("convert", src, small / "out")
        assert_clean_error(
            code, err, "no space left on device; nothing was written", str(small / "out")
        )
        assert list(small.iterdir()) == []
    assert tree_hash(src) == before


@pytest.mark.parametrize("layout", ["bin", "bin-legacy", "safetensors"])
def test_disk_full_injected(model_store, tmp_path, monkeypatch, layout):
    src = model_store("bert", layout)
    real_write, real_copy = os.write, os.copy_file_range
    calls = {"n": 0}

    def full(real):
        def call(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] > 1:  # the header is written; the first data write fails
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(os, "write", full(real_write))
    monkeypatch.setattr(os, "copy_file_range", full(real_copy))
    code, _, err, _ = cli("convert", src, tmp_path / "out")
    assert_clean_error(
        code,
        err,
        f"no space left on device; nothing was written ({tmp_path / 'out'}): free some space",
    )
    assert leftovers(tmp_path) == [] and not (tmp_path / "out").exists()


def test_read_only_destination(model_store, tmp_path):
    src = model_store("bert")
    with tmpfs(tmp_path / "ro", "1m", readonly=True) as ro:
        code, _, err, _ = cli("convert", src, ro / "out")
        assert_clean_error(code, err, "cannot write to the destination's directory", str(ro))


def test_unwritable_destination_directory_injected(model_store, tmp_path, monkeypatch):
    """Where no read-only mount can be made (and root ignores file modes), refuse via access()."""
    src = model_store("bert")
    real_access = os.access
    target = tmp_path / "locked"
    target.mkdir()
    monkeypatch.setattr(
        os, "access", lambda p, mode, **k: False if Path(p) == target else real_access(p, mode, **k)
    )
    code, _, err, _ = cli("convert", src, target / "out")
    assert_clean_error(
        code, err, f"cannot write to the destination's directory (permission denied) ({target})"
    )
    assert list(target.iterdir()) == []


def test_permission_denied_on_source(model_store, monkeypatch, tmp_path):
    src = model_store("bert")
    import builtins

    real_open = builtins.open

    def deny(file, *a, **k):
        if str(file).startswith(str(src)):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", deny)
    code, _, err, _ = cli("convert", src, tmp_path / "out")
    assert_clean_error(
        code, err, "cannot read the checkpoint (permission denied)", "check the file's permissions"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("layout", ["safetensors", "bin"])
def test_source_changed_while_reading(src_copy, tmp_path, layout):
    src = src_copy("bert", layout)
    ckpt = open_checkpoint(src)
    plan = initial_plan(ckpt)
    with open(ckpt.files[0], "ab") as fh:
        fh.write(b"\0" * 16)
    with pytest.raises(CorruptCheckpointError, match="source file changed"):
        execute(plan, ckpt, tmp_path / "out")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_fsync_before_publishing_rename(model_store, tmp_path, monkeypatch):
    events: list[str] = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(
        os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1]
    )
    monkeypatch.setattr(os, "rename", lambda a, b: (events.append("rename"), real_rename(a, b))[1])
    convert(model_store("bert"), tmp_path / "one.safetensors")
    assert events.index("fsync") < events.index("replace")
    events.clear()
    convert(model_store("bert"), tmp_path / "dir", max_shard_size=30_000)
    publish = events.index("replace")
    assert events[:publish].count("fsync") >= 3  # every shard, the index, the directory


# ---------------------------------------------------------------------------------------------
# limits


def _exotic(path: Path) -> tuple[Path, dict[str, bytes]]:
    rng = random.Random(3)
    specs, blobs = [], {}
    for dtype in DTYPES:
        shape = (2, 4) if DTYPES[dtype].bits >= 8 else (4, 4)
        name = f"t.{dtype.lower()}.weight"
        specs.append((name, dtype, shape, nbytes_of(dtype, shape)))
    specs += [
        ("层.权重.weight", "F32", (3, 2), 24),
        ("x" * 1000 + ".weight", "F32", (2, 2), 16),
        ("empty.weight", "F32", (0, 4), 0),
        ("scalar", "F32", (), 4),
    ]
    header, _ = build_header(specs, {"format": "pt"})
    with open(path, "wb") as fh:
        fh.write(header)
        for name, _, _, n in sorted(specs, key=lambda s: 0):
            blobs[name] = rng.randbytes(n)
            fh.write(blobs[name])
    return path, blobs


def _bytes_of(path: Path) -> dict[str, bytes]:
    ckpt = open_checkpoint(path)
    with ckpt.reader() as r:
        return {t.name: r.read(t) for t in ckpt.tensors}


def test_every_dtype_unicode_long_empty_scalar_pass_through(tmp_path):
    src, blobs = _exotic(tmp_path / "exotic.safetensors")
    convert(src, tmp_path / "c.safetensors")
    assert _bytes_of(tmp_path / "c.safetensors") == blobs
    drop(src, tmp_path / "d.safetensors", ["t.bool.*"])
    got = _bytes_of(tmp_path / "d.safetensors")
    assert got == {k: v for k, v in blobs.items() if k != "t.bool.weight"}
    res = reinit(src, tmp_path / "r.safetensors", ["t.f32.weight", "t.u16.weight", "empty.weight"])
    assert [s.name for s in res.plan.skipped] == ["t.u16.weight"]
    got = _bytes_of(tmp_path / "r.safetensors")
    assert got["t.f32.weight"] != blobs["t.f32.weight"] and got["empty.weight"] == b""
    assert {k: v for k, v in got.items() if k != "t.f32.weight"} == {
        k: v for k, v in blobs.items() if k != "t.f32.weight"
    }
    code, _, err, _ = cli("reinit", src, tmp_path / "bad.safetensors", "-p", "t.f8_e4m3.weight")
    assert_clean_error(code, err, "no re-initialisation rule for dtype F8_E4M3 (t.f8_e4m3.weight)")


@pytest.mark.slow
def test_100k_tensors_and_a_4gb_tensor_in_bounded_memory(tmp_path):
    many = tmp_path / "many.safetensors"
    specs = [(f"block.{i}.weight", "F32", (4,), 16) for i in range(100_000)]
    header, _ = build_header(specs, {"format": "pt"})
    with open(many, "wb") as fh:
        fh.write(header)
        fh.truncate(len(header) + 16 * 100_000)
    big = tmp_path / "big.safetensors"
    specs = [("huge.weight", "F32", (1 << 30,), 1 << 32), ("small.bias", "F32", (4,), 16)]
    header, _ = build_header(specs, {"format": "pt"})
    with open(big, "wb") as fh:
        fh.write(header)
        fh.truncate(len(header) + (1 << 32) + 16)  # sparse: no 4 GB written to create it
    exe = [sys.executable, "-m", "ckptsurgeon"]
    for src, one in ((many, "block.7.weight"), (big, "small.bias")):
        for args in (
            ["inspect", src, "--json"],
            ["drop", src, tmp_path / f"d-{src.stem}.safetensors", "-p", one],
            ["diff", "--names-only", src, tmp_path / f"d-{src.stem}.safetensors"],
        ):
            rc, rss = peak_rss_mib([*exe, *map(str, args)])
            assert rc in (0, 1), args
            assert rss < 400, (args, rss)
    assert open_checkpoint(tmp_path / "d-big.safetensors").names == ["huge.weight"]
    assert len(open_checkpoint(tmp_path / "d-many.safetensors").tensors) == 99_999
    assert (
        json.loads(open_checkpoint(tmp_path / "d-big.safetensors").metadata["ckptsurgeon"])[
            "operation"
        ]
        == "drop"
    )


def test_fuzz_mutated_index_files(src_copy, tmp_path):
    src = src_copy("bert", "safetensors-sharded")
    index = src / "model.safetensors.index.json"
    original = index.read_text()
    rng = random.Random("index")
    alphabet = '{}[]",:./\\0123456789abcdefmodel-safetensors '
    errors = 0
    for i in range(120):
        text = list(original)
        for _ in range(rng.randrange(1, 4)):
            pos = rng.randrange(len(text))
            op = rng.choice(["replace", "delete", "insert", "truncate"])
            if op == "replace":
                text[pos] = rng.choice(alphabet)
            elif op == "delete":
                del text[pos]
            elif op == "insert":
                text.insert(pos, rng.choice(alphabet))
            else:
                text = text[:pos]
        index.write_text("".join(text))
        for cmd in (["inspect", src, "--json"], ["convert", src, tmp_path / f"o{i}"]):
            code, _, err, exc = cli(*cmd)
            assert exc is None or isinstance(exc, SystemExit), (i, repr(exc))
            if code != 0:
                assert_clean_error(code, err)
                errors += 1
        assert not [p for p in tmp_path.iterdir() if "ckptsurgeon" in p.name]
    index.write_text(original)
    assert errors > 0


# ---------------------------------------------------------------------------------------------
# Signals: SIGINT, SIGTERM and SIGHUP leave nothing behind, whenever they arrive


@pytest.mark.parametrize(
    ("sig", "status", "message"),
    [
        (signal.SIGTERM, 143, "Error: terminated by SIGTERM; nothing was written"),
        (signal.SIGHUP, 129, "Error: terminated by SIGHUP; nothing was written"),
        (signal.SIGINT, 130, "Error: interrupted; nothing was written"),
    ],
)
def test_signal_mid_write_removes_the_temp_and_publishes_nothing(tmp_path, sig, status, message):
    src = _synthetic(tmp_path / "src", 8, 6_000_000)  # 192 MB to re-initialise: seconds
    out = tmp_path / "out"
    out.mkdir()
    dest = out / "dest"
    cmd = [sys.executable, "-m", "ckptsurgeon", "reinit", src, dest, "-p", "encoder.*"]
    proc = subprocess.Popen(
        list(map(str, cmd)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=signals_as_usual,
    )
    deadline = time.monotonic() + 60
    tmp = out / ".dest.ckptsurgeon-tmp"
    while proc.poll() is None and not tmp.exists() and time.monotonic() < deadline:
        time.sleep(0.002)
    assert proc.poll() is None, "finished before the signal; make the job bigger"
    time.sleep(0.1)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert err.decode().strip().splitlines() == [message]
    assert leftovers(out) == [] and not dest.exists()


def test_an_interrupt_swallowed_by_other_code_still_stops_publication(model_store, tmp_path):
    """``import torch`` can swallow a KeyboardInterrupt and carry on: the recorded signal is
    checked before publishing, so the job still ends with nothing published."""
    dest = tmp_path / "out"
    script = (
        "import os, signal, sys, time\n"
        "import ckptsurgeon.runner as s\n"
        "real = s.open_checkpoint\n"
        "def swallowing(path, *args):\n"
        "    try:\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "        time.sleep(1)\n"
        "    except KeyboardInterrupt:\n"
        "        pass  # what import torch does at some moments\n"
        "    return real(path, *args)\n"
        "s.open_checkpoint = swallowing\n"
        "from ckptsurgeon.cli import main\n"
        "main()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, "convert", str(model_store("bert", "bin")), str(dest)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=signals_as_usual,
    )
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "Error: interrupted; nothing was written"
    assert not dest.exists() and leftovers(tmp_path) == []


def test_ctrl_c_at_any_moment_of_a_bin_job_publishes_nothing(model_store, tmp_path):
    src = model_store("bert", "bin")
    dest = tmp_path / "out"
    cmd = [sys.executable, "-m", "ckptsurgeon", "convert", str(src), str(dest)]
    durations = []
    for _ in range(2):
        start = time.monotonic()
        subprocess.run(cmd, check=True, capture_output=True)
        durations.append(time.monotonic() - start)
        shutil.rmtree(dest)
    whole = min(durations)
    for i in range(12):  # spread over the first 60% of a job, torch's import included
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=signals_as_usual
        )
        time.sleep(whole * 0.6 * i / 12)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert_interrupted(proc.returncode, err.decode(), i)
        assert not dest.exists() and leftovers(tmp_path) == [], i


def assert_interrupted(code: int, err: str, where: object) -> None:
    """Exit 130 and the one line, or a SIGINT that came while Python itself was starting
    (before its handlers were set, or while it imported ``site``: no code of ours had run).
    torch's C++ import no longer aborts (-6): signals wait until it is done."""
    if code == 130:
        assert err == "Error: interrupted; nothing was written\n", (where, err)
        return
    assert code in (-signal.SIGINT, 1), (where, code, err)
    assert err == "" or err.startswith("Fatal Python error: init_import_site"), (where, err)
    assert "ckptsurgeon/" not in err, (where, err)


@pytest.mark.parametrize(
    "module", ["click", "ckptsurgeon.cli", "ckptsurgeon.api", "numpy",
               "torch", "torch._C", "torch.nn", "ckptsurgeon.run.execute", "ckptsurgeon.run.writer"],
)  # fmt: skip
def test_ctrl_c_while_any_module_loads_is_one_line_and_130(model_store, tmp_path, module):
    """A Ctrl-C in the first fraction of a second (while importing) printed a traceback and
    exited -2; in torch's C++ init it aborted (-6). Here the signal is sent at the moment each
    module starts loading, deterministically."""
    src, dest = model_store("bert", "bin"), tmp_path / "out"
    script = f"""
import importlib.abc, os, signal, sys

class Trap(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == {module!r}:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, Trap())
sys.argv = ["ckptsurgeon", "convert", {str(src)!r}, {str(dest)!r}]
import runpy
runpy.run_module("ckptsurgeon", run_name="__main__")
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, preexec_fn=signals_as_usual
    )
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == "Error: interrupted; nothing was written\n"
    assert not dest.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("late_error", ["ImportError", "CkptSurgeonError"])
def test_an_error_after_a_swallowed_ctrl_c_exits_as_interrupted(model_store, tmp_path, late_error):
    # What CI once hit: Ctrl-C lands inside `import torch`, which catches it and leaves torch
    # half-imported; the next use raises ImportError ("cannot load module more than once per
    # process"). The user interrupted the job: exit 130 and the one interrupt line, not exit 2.
    src = model_store("bert", "safetensors")
    dest = tmp_path / "out"
    script = f"""
import os, signal, sys
import ckptsurgeon.api
from ckptsurgeon.errors import CkptSurgeonError
from ckptsurgeon.cli import main

def run(*args, **kwargs):
    try:
        os.kill(os.getpid(), signal.SIGINT)
    except KeyboardInterrupt:
        pass  # swallowed, as torch's import can
    if {late_error!r} == "ImportError":
        raise ImportError("cannot load module more than once per process")
    raise CkptSurgeonError("reading x: broken")

ckptsurgeon.api.run = run
sys.argv = ["ckptsurgeon", "convert", {str(src)!r}, {str(dest)!r}]
main()
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, preexec_fn=signals_as_usual
    )
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == "Error: interrupted; nothing was written\n"
    assert not dest.exists() and leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# Fuzzed hostile source trees: links in and out, loops, FIFOs, stale weights


_KINDS = [
    "file",
    "weight",
    "dir",
    "link-secret",
    "link-outside-dir",
    "link-inside-file",
    "link-inside-dir",
    "link-ancestor",
    "link-broken",
    "fifo",
]


@settings(max_examples=40, deadline=None)
@given(
    entries=st.lists(
        st.tuples(st.sampled_from(_KINDS), st.integers(0, 3), st.sampled_from("abcdef")),
        max_size=14,
    )
)
def test_fuzz_hostile_source_trees(model_store, entries):
    """Whatever the tree beside the weights holds, DEST gets only regular files whose bytes come
    from inside SRC, no stale weights, no links; nothing hangs; SRC is unchanged."""
    import tempfile

    base_model = model_store("bert")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        secret = tmp_path / "secret.txt"
        secret.write_text("SECRET-BYTES\n")
        (tmp_path / "outside").mkdir()
        (tmp_path / "outside" / "key.pem").write_text("SECRET-BYTES\n")
        src = tmp_path / "src"
        shutil.copytree(base_model, src)
        folders = [src]
        for kind, where, name in entries:
            parent = folders[where % len(folders)]
            path = parent / f"{kind}-{name}"
            if path.exists() or path.is_symlink():
                continue
            if kind == "file":
                path.write_text(f"inside {name}\n")
            elif kind == "weight":
                (parent / f"{name}.bin").write_bytes(b"stale")
            elif kind == "dir":
                path.mkdir()
                folders.append(path)
            elif kind == "link-secret":
                path.symlink_to(secret)
            elif kind == "link-outside-dir":
                path.symlink_to(tmp_path / "outside")
            elif kind == "link-inside-file":
                path.symlink_to(src / "config.json")
            elif kind == "link-inside-dir":
                path.symlink_to(folders[-1])
            elif kind == "link-ancestor":
                path.symlink_to(parent if name in "abc" else src)
            elif kind == "link-broken":
                path.symlink_to(src / "missing")
            else:
                os.mkfifo(path)
        before = tree_hash(src)
        dest = tmp_path / "out"
        previous = signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(TimeoutError()))
        signal.alarm(30)
        try:
            convert(src, dest)
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
        assert tree_hash(src) == before
        for p in dest.rglob("*"):
            assert not p.is_symlink(), p
            if p.is_file():
                assert b"SECRET" not in p.read_bytes(), p
                if p.parent == dest:
                    assert p.name == "model.safetensors" or not p.name.endswith(".bin"), p
        assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("make", "where", "kind"),
    [
        (lambda d: os.mkfifo(d / "src"), "src", "a FIFO"),
        (lambda d: os.mkfifo(d / "src.safetensors"), "src.safetensors", "a FIFO"),
        (
            lambda d: ((d / "src").mkdir(), os.mkfifo(d / "src" / "model.safetensors")),
            "src/model.safetensors",
            "a FIFO",
        ),
        (
            lambda d: ((d / "src").mkdir(), os.mkfifo(d / "src" / "pytorch_model.bin")),
            "src/pytorch_model.bin",
            "a FIFO",
        ),
        (lambda d: (d / "src").symlink_to("/dev/zero"), "src", "a device"),
    ],
)
def test_fifo_or_device_as_weights_is_refused_without_opening(tmp_path, make, where, kind):
    make(tmp_path)
    src = tmp_path / ("src.safetensors" if where == "src.safetensors" else "src")
    for args in (["inspect", src], ["convert", src, tmp_path / "out"], ["diff", src, src]):
        proc = subprocess.run(
            [sys.executable, "-m", "ckptsurgeon", *map(str, args)],
            capture_output=True,
            text=True,
            timeout=60,  # opening a FIFO would block forever
        )
        assert_clean_error(proc.returncode, proc.stderr, f"it is {kind}, which is never opened")
        assert f"({tmp_path / where})" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_json_nested_100000_deep_is_a_corrupt_file_not_a_crash(model_store, tmp_path):
    """A header ``[[[[...`` 100,000 levels deep raised RecursionError: 'unexpected ... report
    it'. Headers, indexes and config.json nested that deep are corrupt files: one clean line."""
    deep = b"[" * 100_000 + b"]" * 100_000
    src = write_raw(tmp_path / "deep.safetensors", None, raw_header=b'{"x": ' + deep + b"}")
    for cmd in (["inspect", src], ["convert", src, tmp_path / "out"]):
        code, _, err, _ = cli(*cmd)
        assert_clean_error(
            code, err, "not a valid safetensors file", "JSON nested too deep", str(src)
        )
    index = tmp_path / "idx" / "model.safetensors.index.json"
    index.parent.mkdir()
    index.write_bytes(b'{"weight_map": ' + deep + b"}")
    code, _, err, _ = cli("inspect", index.parent)
    assert_clean_error(code, err, "index is not a checkpoint index (JSON nested too deep)")
    cfg = tmp_path / "cfg"
    shutil.copytree(model_store("bert", "safetensors"), cfg)
    (cfg / "config.json").write_bytes(b'{"a": ' + deep + b"}")
    code, _, err, _ = cli("convert", cfg, tmp_path / "out2")
    assert_clean_error(code, err, "config.json is nested too deep to be a config")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()
    assert leftovers(tmp_path) == []


def test_two_runs_to_one_dest_the_second_fails_at_once_and_the_first_publishes(
    model_store, tmp_path
):
    """Two runs to the same DEST shared its temporary: both failed 'does not read back ...
    this is a bug'. Now the second fails at once (exit 2, names the holder) while the first,
    held mid-write here, publishes intact; the lock file goes with the run."""
    import threading

    from ckptsurgeon.tools.compare import diff

    src = model_store("bert", "safetensors")
    dest = tmp_path / "out"
    convert(src, dest)  # an earlier output, replaced with --overwrite by both runs
    writing, release = threading.Event(), threading.Event()
    result: dict[str, object] = {}

    def hold(n: int, total: int) -> None:
        writing.set()
        release.wait(30)

    def first() -> None:
        try:
            result["first"] = apply([{"op": "convert"}], src, dest, overwrite=True, progress=hold)
        except BaseException as exc:
            result["first"] = exc

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert writing.wait(30)
        assert (tmp_path / ".out.ckptsurgeon-lock").read_text() == f"{os.getpid()}\n"
        before = time.monotonic()
        code, _, err, _ = cli("convert", src, dest, "--overwrite")
        assert time.monotonic() - before < 5
        assert_clean_error(
            code, err, f"destination is being written by another ckptsurgeon run (pid {os.getpid()})",
            str(dest), "wait for it to finish",
        )  # fmt: skip
        code, _, err, _ = cli("drop", src, dest, "-p", "cls.*")  # without --overwrite too
        assert_clean_error(code, err, "destination already exists")
    finally:
        release.set()
        thread.join(30)
    assert not isinstance(result["first"], BaseException), result["first"]
    assert diff(src, dest).identical
    assert leftovers(tmp_path) == []


def test_a_lock_left_by_a_killed_run_is_taken_over(model_store, tmp_path):
    import sys

    src = model_store("bert", "safetensors")
    lock = tmp_path / ".out.ckptsurgeon-lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'%d' % os.getpid())\n"
         "print('held', flush=True); time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        code, _, err, _ = cli("convert", src, tmp_path / "out")
        assert_clean_error(code, err, f"another ckptsurgeon run (pid {holder.pid})")
        assert not (tmp_path / "out").exists()
    finally:
        holder.kill()
        holder.wait()
    assert lock.exists()  # SIGKILL leaves the file; the kernel dropped the lock
    code, _, err, _ = cli("convert", src, tmp_path / "out")
    assert code == 0, err
    assert leftovers(tmp_path) == []
    (tmp_path / ".out2.ckptsurgeon-lock").symlink_to(tmp_path / "elsewhere")
    code, _, err, _ = cli("convert", src, tmp_path / "out2")
    assert_clean_error(code, err, "a symbolic link sits where the destination's lock file goes")
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "out2").exists()
