"""Hugging Face repo ids as SRC, resolved in a cache this test writes (no network)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import reference_state
from test_hardening import assert_clean_error, cli, tree_hash

from ckptsurgeon import inspect, reinit

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"


def make_cache(cache: Path, repo: str, src: Path, commit: str = COMMIT, ref: str = "main") -> Path:
    """The layout huggingface_hub writes: refs/<ref>, snapshots/<commit>/ of relative symlinks
    into blobs/."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / ref).write_text(commit)
    snap = folder / "snapshots" / commit
    for f in sorted(src.rglob("*")):
        if f.is_dir():
            continue
        rel = f.relative_to(src)
        blob = folder / "blobs" / f"{abs(hash((commit, str(rel)))):x}"
        shutil.copyfile(f, blob)
        (snap / rel).parent.mkdir(parents=True, exist_ok=True)
        (snap / rel).symlink_to(os.path.relpath(blob, (snap / rel).parent))
    return snap


@pytest.fixture
def hub(model_store, tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hf-cache"
    make_cache(cache, "org/tiny-bert", model_store("bert"))
    make_cache(cache, "org/tiny-bert", model_store("roberta"), commit=OTHER, ref="v2")
    make_cache(cache, "tiny-plain", model_store("bert", "bin"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # no local folder named like the repos
    return cache


def test_every_command_takes_a_repo_id_from_the_cache(hub, model_store, tmp_path):
    info = inspect("org/tiny-bert")
    assert len(info.tensors) == len(inspect(model_store("bert")).tensors)
    assert inspect("tiny-plain").checkpoint.format == "pytorch"
    res = reinit("org/tiny-bert", tmp_path / "out", top_layers=1)
    assert res.written is not None
    for rel in ("config.json", "tokenizer_config.json", "1_Pooling/config.json"):
        assert not (tmp_path / "out" / rel).is_symlink()
        assert (tmp_path / "out" / rel).read_bytes() == (model_store("bert") / rel).read_bytes()
    assert not any("not copied" in w for w in res.plan.warnings)
    for args in (
        ["inspect", "org/tiny-bert", "--json"],
        ["convert", "tiny-plain", tmp_path / "c"],
        ["drop", "org/tiny-bert", tmp_path / "d", "-p", "cls.*"],
        ["cast", "org/tiny-bert", tmp_path / "e", "--dtype", "bf16"],
        ["rename", "org/tiny-bert", tmp_path / "f", "--add-prefix", "x."],
        ["layers", "org/tiny-bert", tmp_path / "g", "--keep", "0"],
        ["resize-vocab", "org/tiny-bert", tmp_path / "h", "--size", "100"],
        ["diff", "org/tiny-bert", model_store("bert")],
        ["apply", _recipe(tmp_path), "org/tiny-bert@main", tmp_path / "i"],
    ):
        code, out, err, _ = cli(*args)
        assert code == 0, (args, err)
    assert tree_hash(tmp_path / "c") == tree_hash(
        _convert_local(model_store("bert", "bin"), tmp_path / "local")
    )


def _recipe(tmp_path: Path) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text("steps:\n  - {op: drop, patterns: ['cls.*']}\n  - {op: cast, dtype: fp16}\n")
    return path


def _convert_local(src: Path, dest: Path) -> Path:
    from ckptsurgeon import convert

    convert(src, dest)
    return dest


def test_revisions_by_branch_tag_or_commit(hub):
    def family(info) -> set[str]:
        return {t.name.split(".")[0] for t in info.tensors} & {"bert", "roberta"}

    assert family(inspect("org/tiny-bert@v2")) == {"roberta"}
    assert family(inspect("org/tiny-bert", revision="v2")) == {"roberta"}
    assert family(inspect(f"org/tiny-bert@{COMMIT}")) == {"bert"}
    assert family(inspect("org/tiny-bert")) == {"bert"}  # refs/main
    code, out, err, _ = cli("inspect", "org/tiny-bert", "--revision", "v2", "--json")
    assert code == 0 and any(t["name"].startswith("roberta.") for t in json.loads(out)["tensors"])


def test_not_cached_offline_is_one_clear_error(hub, tmp_path):
    code, _, err, _ = cli("inspect", "org/not-here")
    assert_clean_error(code, err)
    assert err.strip() == (
        "Error: no such file or directory, and repo 'org/not-here' is not in the Hugging Face "
        f"cache (cache: {hub}) (org/not-here): check the path, or download the model first: "
        "hf download org/not-here"
    )
    code, _, err, _ = cli("convert", "org/tiny-bert@nope", tmp_path / "o")
    assert_clean_error(
        code, err, "at revision 'nope' is not in the Hugging Face cache", "--revision nope"
    )
    # a path that cannot be a repo id keeps the plain message
    code, _, err, _ = cli("inspect", "./missing/dir/model")
    assert (
        err.strip()
        == "Error: no such file or directory (./missing/dir/model): check the path of the checkpoint"
    )


def test_repo_ids_through_the_cli_process_with_hf_home(model_store, tmp_path):
    """HF_HOME (not HF_HUB_CACHE) locates the cache; the real CLI, no network."""
    make_cache(tmp_path / "home" / "hub", "org/tiny-bert", model_store("bert"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "ckptsurgeon", "reinit", "org/tiny-bert", str(tmp_path / "out"), "-p", "cls.*"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert set(reference_state(tmp_path / "out")) == set(reference_state(model_store("bert")))


@pytest.fixture
def fake_hub(tmp_path):
    """A local server answering as the Hub does for a repo that does not exist."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
            self.send_header("X-Error-Message", "Repository not found")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _run_online(args: list[str], cache: Path, endpoint: str, cwd: Path):
    import time

    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_CACHE=str(cache), HF_ENDPOINT=endpoint)
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "ckptsurgeon", *args], capture_output=True, text=True, env=env,
        cwd=cwd, timeout=120,
    )  # fmt: skip
    return proc, time.monotonic() - start


def test_a_bare_name_online_is_looked_up_in_the_cache_then_once_on_the_hub(
    model_store, tmp_path, fake_hub
):
    """``inspect my-modle-typo`` (online) spent 23.6 s on five retries and said 'repo ... is
    cannot be fetched'. Now: the cache first, then one request to the Hub; the error says there
    is no such local path and what the Hub said, within seconds."""
    import socket

    cache = tmp_path / "cache"
    make_cache(cache, "org/tiny-bert", model_store("bert"))
    with socket.socket() as s:  # a port nobody listens on: the Hub cannot be reached
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    proc, took = _run_online(["inspect", "my-modle-typo"], cache, fake_hub, tmp_path)
    assert proc.returncode == 2 and took < 10, (took, proc.stderr)
    assert proc.stderr == (
        "Error: no such file or directory, and repo 'my-modle-typo' is not in the Hugging Face "
        f"cache (cache: {cache}); on the Hub: no such repo (or it is private: log in with hf "
        "auth login) (my-modle-typo): check the path, or download the model first: hf download "
        "my-modle-typo\n"
    )
    proc, took = _run_online(["inspect", "my-modle-typo"], cache, closed, tmp_path)
    assert proc.returncode == 2 and took < 10, (took, proc.stderr)
    assert len(proc.stderr.splitlines()) == 1 and "Retrying" not in proc.stderr
    assert "is not in the Hugging Face cache" in proc.stderr
    assert "on the Hub: the Hub could not be reached (" in proc.stderr
    # a cached repo needs no network, online too
    proc, took = _run_online(["inspect", "org/tiny-bert", "--json"], cache, closed, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["tensors"]
