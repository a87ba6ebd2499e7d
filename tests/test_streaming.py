"""How bytes stream: the producer of computed bytes runs ahead at once, within a byte budget;
kept tensors that lie back to back are copied in few kernel calls; imports stay lazy."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import ckptsurgeon.execute as execute_module
from ckptsurgeon import convert, reinit
from ckptsurgeon.checkpoint import open_checkpoint
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
        "assert 'ckptsurgeon.inspection' not in sys.modules, 'inspection'\n"
        "assert 'ckptsurgeon.api' not in sys.modules, 'api'\n"
        "assert 'numpy' not in sys.modules and 'torch' not in sys.modules\n"
        "for name in ckptsurgeon.__all__:\n"
        "    getattr(ckptsurgeon, name)\n"
        "assert callable(ckptsurgeon.diff) and callable(ckptsurgeon.inspect)\n"
        "import ckptsurgeon.diff\n"
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
