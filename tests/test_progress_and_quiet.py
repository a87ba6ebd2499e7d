"""Progress on a terminal only, --quiet, --threads, and the text diff's order and NaN column."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
from test_hardening import cli, tree_hash

from ckptsurgeon.formats.safetensors import build_header


def _big(path: Path, n_layers: int = 12, elems: int = 2_000_000, offset: float = 0.0) -> Path:
    path.mkdir()
    shape = (elems // 8, 8)  # 2-d: a weight that reinit knows how to draw
    specs = [(f"encoder.layer.{i}.dense.weight", "F32", shape, 4 * elems) for i in range(n_layers)]
    header, _ = build_header(specs, {"format": "pt"})
    with open(path / "model.safetensors", "wb") as fh:
        fh.write(header)
        for i in range(n_layers):
            fh.write((np.full(elems, i, dtype=np.float32) + np.float32(offset)).tobytes())
    (path / "config.json").write_text('{"model_type": "bert"}\n')
    return path


def _run_with_tty_stderr(argv: list[str]) -> tuple[int, bytes, bytes]:
    """Run with stderr on a pseudo-terminal (as in an interactive shell), stdout on a pipe."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    seen = b""
    while True:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                data = os.read(master, 1 << 16)
            except OSError:
                break
            if not data:
                break
            seen += data
        elif proc.poll() is not None:
            break
    out = proc.stdout.read() if proc.stdout else b""
    os.close(master)
    return proc.wait(), out, seen


def test_progress_bar_on_a_terminal_only(tmp_path):
    src = _big(tmp_path / "src")
    cmd = [sys.executable, "-m", "ckptsurgeon"]
    code, out, tty = _run_with_tty_stderr(
        [*cmd, "reinit", str(src), str(tmp_path / "a"), "-p", "*"]
    )
    assert code == 0, tty
    assert b"reinit" in tty and b"B/s" in tty and b"%" in tty  # bytes, rate, share done
    assert b"B/s" not in out  # never on stdout
    for extra in ([], ["--quiet"]):
        code, out, tty = _run_with_tty_stderr([*cmd, "diff", str(src), str(tmp_path / "a"), *extra])
        assert code == 1
        assert (b"B/s" in tty) == (not extra)
    piped = subprocess.run([*cmd, "convert", str(src), str(tmp_path / "b")], capture_output=True)
    assert piped.returncode == 0 and piped.stderr == b""  # nothing reaches a pipe or a log
    piped = subprocess.run([*cmd, "inspect", str(src), "--stats"], capture_output=True)
    assert piped.returncode == 0 and piped.stderr == b""


def test_quiet_silences_warnings_not_errors(ddp_src, tmp_path):
    src = ddp_src
    code, _, err, _ = cli("convert", src, tmp_path / "loud")
    assert code == 0 and "Warning: names start with 'module.'" in err
    code, out, err, _ = cli("convert", src, tmp_path / "quiet", "--quiet")
    assert code == 0 and err == "" and "tensors converted" in out
    code, _, err, _ = cli("--quiet", "convert", src, tmp_path / "quiet")
    assert code == 2 and err.startswith("Error: destination already exists")


def test_threads_do_not_change_a_byte(model_store, tmp_path):
    src = _big(tmp_path / "src", n_layers=2)
    for n in ("1", "2", "3"):
        code, _, err, _ = cli("apply", _recipe(tmp_path), src, tmp_path / f"t{n}", "--threads", n)
        assert code == 0, err
    assert tree_hash(tmp_path / "t1") == tree_hash(tmp_path / "t2") == tree_hash(tmp_path / "t3")
    code, _, err, _ = cli("reinit", src, tmp_path / "x", "-p", "*", "--threads", "0")
    assert code == 2 and "Invalid value for '--threads'" in err


def _recipe(tmp_path: Path) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text("steps:\n  - {op: reinit, patterns: ['*']}\n  - {op: cast, dtype: bf16}\n")
    return path


def test_text_diff_sorts_layers_by_number_and_shows_one_sided_nan(tmp_path):
    a = _big(tmp_path / "a", n_layers=12, elems=8)
    b = tmp_path / "b"
    b.mkdir()
    raw = bytearray((a / "model.safetensors").read_bytes())
    (b / "model.safetensors").write_bytes(bytes(raw))
    # change every layer; put a NaN in layer 10 on one side only
    specs = [(f"encoder.layer.{i}.dense.weight", "F32", (1, 8), 32) for i in range(12)]
    header, _ = build_header(specs, {"format": "pt"})
    values = [np.full(8, i + 0.5, dtype=np.float32) for i in range(12)]
    values[10][3] = np.nan
    (b / "model.safetensors").write_bytes(header + b"".join(v.tobytes() for v in values))
    code, out, _, _ = cli("diff", a, b)
    assert code == 1
    groups = [
        ln.split()[0]
        for ln in out.split("by layer or module:")[1].split("\n\n")[0].splitlines()[2:]
    ]
    assert groups == [f"encoder.layer.{i}" for i in range(12)]
    table = out.split("\n\n")[-1].splitlines()
    assert table[0].split()[-3:] == ["nan/inf", "differing"] or table[0].endswith(
        "nan/inf differing"
    )
    row10 = next(ln for ln in table if "encoder.layer.10." in ln)
    assert row10.split()[-1] == "1"
    assert [ln.split()[1] for ln in table[1:]] == [
        f"encoder.layer.{i}.dense.weight" for i in range(12)
    ]
