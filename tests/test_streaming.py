"""How bytes stream: the producer of computed bytes runs ahead at once, within a byte budget;
kept tensors that lie back to back are copied in few kernel calls; every output file's blocks
are reserved before its first byte; imports stay lazy; numpy's BLAS gets one thread."""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import sys
import threading
import time

import pytest
from test_hardening import cli

import ckptsurgeon.run.execute as execute_module
import ckptsurgeon.run.writer as writer_module
from ckptsurgeon import convert, reinit
from ckptsurgeon.cli import _one_blas_thread
from ckptsurgeon.formats.checkpoint import open_checkpoint
from ckptsurgeon.pipeline import background


def _wait_for(condition, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not condition() and time.monotonic() < end:
        time.sleep(0.01)


def test_background_starts_before_the_first_next_and_keeps_to_its_byte_budget():
    made: list[int] = []

    def items():
        for i in range(100):
            made.append(i)
            yield b"x" * 10

    ahead = background(items(), budget=35, size=len)
    _wait_for(lambda: len(made) >= 4)
    time.sleep(0.1)  # would it go further?
    # three items (30 bytes) are held; the fourth is made and waits for room
    assert len(made) == 4
    assert next(ahead) == b"x" * 10
    _wait_for(lambda: len(made) >= 5)
    assert len(made) == 5
    assert sum(1 for _ in ahead) == 99
    assert len(made) == 100


def test_background_item_larger_than_the_budget_still_passes():
    ahead = background(iter([b"y" * 100, b"z"]), budget=10, size=len)
    assert list(ahead) == [b"y" * 100, b"z"]


def test_background_close_stops_a_producer_never_read():
    stopped = threading.Event()

    def items():
        try:
            while True:
                yield b"x"
        finally:
            stopped.set()

    ahead = background(items(), depth=2)
    ahead.close()
    assert stopped.is_set()
    assert list(ahead) == []


def test_background_forwards_the_producers_error():
    def items():
        yield 1
        raise ValueError("boom")

    ahead = background(items())
    assert next(ahead) == 1
    try:
        next(ahead)
    except ValueError as exc:
        assert str(exc) == "boom"
    else:  # pragma: no cover
        raise AssertionError("no error")


def _counting(monkeypatch):
    calls = {"n": 0}
    real = os.copy_file_range

    def counted(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(os, "copy_file_range", counted)
    return calls


def test_back_to_back_tensors_are_copied_in_one_call_with_the_same_bytes(
    model_store, tmp_path, monkeypatch
):
    src = model_store("bert")
    n_tensors = len(open_checkpoint(src).tensors)
    calls = _counting(monkeypatch)
    convert(src, tmp_path / "runs")
    in_runs = calls["n"]
    # a cap of one byte makes every run a single tensor: the old, one call per tensor
    monkeypatch.setattr(execute_module, "KICK_BYTES", 1)
    calls["n"] = 0
    convert(src, tmp_path / "single")
    assert calls["n"] >= n_tensors > 10 * in_runs
    assert in_runs >= 1
    a = (tmp_path / "runs" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "single" / "model.safetensors").read_bytes()


def test_runs_stop_at_computed_tensors_and_keep_the_bytes(model_store, tmp_path, monkeypatch):
    src = model_store("bert")
    reinit(src, tmp_path / "a", top_layers=1)
    monkeypatch.setattr(execute_module, "KICK_BYTES", 1)
    reinit(src, tmp_path / "b", top_layers=1)
    a = (tmp_path / "a" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_runs_are_capped_so_write_back_still_starts(model_store, tmp_path, monkeypatch):
    src = model_store("bert")
    calls = _counting(monkeypatch)
    convert(src, tmp_path / "a")
    uncapped = calls["n"]
    total = sum(t.nbytes for t in open_checkpoint(src).tensors)
    monkeypatch.setattr(execute_module, "KICK_BYTES", total // 4)
    calls["n"] = 0
    convert(src, tmp_path / "b")
    assert calls["n"] > uncapped
    a = (tmp_path / "a" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_import_ckptsurgeon_loads_only_what_is_used():
    code = (
        "import sys, ckptsurgeon\n"
        "assert 'ckptsurgeon.tools.inspection' not in sys.modules, 'inspection'\n"
        "assert 'ckptsurgeon.api' not in sys.modules, 'api'\n"
        "assert 'numpy' not in sys.modules and 'torch' not in sys.modules\n"
        "for name in ckptsurgeon.__all__:\n"
        "    getattr(ckptsurgeon, name)\n"
        "assert callable(ckptsurgeon.diff) and callable(ckptsurgeon.inspect)\n"
        "import ckptsurgeon.tools.compare\n"
        "assert callable(ckptsurgeon.diff)\n"
        "try:\n"
        "    ckptsurgeon.nope\n"
        "except AttributeError as exc:\n"
        "    assert str(exc) == \"module 'ckptsurgeon' has no attribute 'nope'\"\n"
        "else:\n"
        "    raise SystemExit('no AttributeError')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _recording_preallocation(monkeypatch) -> list[tuple[int, int]]:
    """(fd, size) of every preallocation, each still done for real."""
    calls: list[tuple[int, int]] = []
    real = writer_module._preallocate

    def record(fd: int, size: int) -> None:
        calls.append((fd, size))
        real(fd, size)

    monkeypatch.setattr(writer_module, "_preallocate", record)
    return calls


@pytest.mark.parametrize("shard_share", [1, 3])
def test_every_output_file_is_preallocated_at_its_exact_size(
    model_store, tmp_path, monkeypatch, shard_share
):
    src = model_store("bert")
    calls = _recording_preallocation(monkeypatch)
    total = sum(t.nbytes for t in open_checkpoint(src).tensors)
    dest = tmp_path / "out"
    reinit(src, dest, top_layers=1, max_shard_size=total // shard_share + 1)
    files = sorted(dest.glob("*.safetensors"))
    assert (len(files) > 1) == (shard_share > 1)
    assert sorted(size for _, size in calls) == sorted(f.stat().st_size for f in files)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fallocate is Linux's")
def test_preallocation_reserves_blocks_but_keeps_the_size(tmp_path):
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        writer_module._preallocate(fd, 8 << 20)
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if st.st_blocks == 0:
        pytest.skip("this file system does not preallocate")
    assert st.st_size == 0 and st.st_blocks * 512 >= 8 << 20


def _failing_fallocate(monkeypatch, err: int) -> None:
    def fallocate(fd: int, mode: int, offset: int, length: int) -> int:
        assert mode == writer_module.FALLOC_FL_KEEP_SIZE and offset == 0 and length > 0
        ctypes.set_errno(err)
        return -1

    monkeypatch.setattr(writer_module, "_FALLOCATE", fallocate)


def test_a_disk_too_small_is_found_before_any_tensor_is_written(model_store, tmp_path, monkeypatch):
    src = model_store("bert")
    _failing_fallocate(monkeypatch, errno.ENOSPC)
    copies = _counting(monkeypatch)
    code, _, err, _ = cli("convert", src, tmp_path / "out")
    assert code == 2 and copies["n"] == 0
    assert err == (
        f"Error: no space left on device; nothing was written ({tmp_path / 'out'}): "
        "free some space or write elsewhere\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_file_system_that_cannot_preallocate_still_gets_the_same_bytes(
    model_store, tmp_path, monkeypatch
):
    src = model_store("bert")
    reinit(src, tmp_path / "a", top_layers=1)
    _failing_fallocate(monkeypatch, errno.EOPNOTSUPP)
    reinit(src, tmp_path / "b", top_layers=1)
    a = (tmp_path / "a" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "model.safetensors").read_bytes()


BLAS_VARS = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")


def test_the_cli_gives_blas_one_thread(monkeypatch):
    for var in BLAS_VARS:
        monkeypatch.delenv(var, raising=False)
    _one_blas_thread()
    assert os.environ["OPENBLAS_NUM_THREADS"] == "1"


@pytest.mark.parametrize("var", BLAS_VARS)
def test_the_cli_keeps_a_blas_thread_count_the_user_chose(monkeypatch, var):
    for v in BLAS_VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv(var, "4")
    _one_blas_thread()
    assert os.environ[var] == "4"
    assert all(v == var or v not in os.environ for v in BLAS_VARS)


def test_a_command_runs_with_one_blas_thread(model_store, tmp_path):
    """In a fresh process, numpy (loaded by reinit's draws) sees the one-thread setting."""
    src = model_store("bert")
    env = {k: v for k, v in os.environ.items() if k not in BLAS_VARS}
    code = (
        "import os, sys\n"
        "from ckptsurgeon.cli import main\n"
        "try:\n"
        "    main(['reinit', sys.argv[1], sys.argv[2], '--top-layers', '1', '-q'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "assert 'numpy' in sys.modules\n"
        "print(os.environ['OPENBLAS_NUM_THREADS'])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(src), str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.splitlines()[-1] == "1"
