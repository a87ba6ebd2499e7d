"""diff: statuses, metrics, tolerances, NaN handling, normalisation, exit codes, JSON, symmetry."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import reference_state
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from ckptsurgeon import convert, drop, reinit
from ckptsurgeon.cli import main
from ckptsurgeon.formats.safetensors import build_header
from ckptsurgeon.tools.compare import diff

JSON_KEYS = {
    "name",
    "status",
    "dtype_a",
    "dtype_b",
    "shape_a",
    "shape_b",
    "max_abs",
    "mean_abs",
    "rel_l2",
    "cosine",
}


def run(*args):
    r = CliRunner().invoke(main, ["diff", *map(str, args)])
    return r.exit_code, r.stdout, r.stderr


def save(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


@pytest.mark.parametrize(
    "layout", ["safetensors-sharded", "bin", "bin-legacy", "bin-sharded", "pt-wrapped"]
)
def test_same_checkpoint_in_other_layouts_is_identical(model_store, layout, tmp_path):
    a = model_store("bert", "safetensors")
    b = model_store("bert", layout)
    result = diff(a, b)
    assert result.identical and set(result.summary) == {"identical"}
    assert result.summary["identical"] == 74
    code, out, _ = run(a, b)
    assert code == 0 and "no differences" in out
    convert(b, tmp_path / "c", max_shard_size=25_000)
    assert diff(b, tmp_path / "c").identical


def test_against_reinit_and_drop(model_store, tmp_path):
    src = model_store("bert")
    reinit(src, tmp_path / "r", ["bert.encoder.layer.3.*.weight"], ["*LayerNorm*"])
    result = diff(src, tmp_path / "r")
    changed = {t.name for t in result.tensors if t.status == "changed"}
    assert changed == {
        f"bert.encoder.layer.3.{m}.weight"
        for m in (
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "intermediate.dense",
            "output.dense",
        )
    }
    for t in result.tensors:
        if t.status == "changed":
            assert abs(t.cosine) < 0.3 and t.rel_l2 > 1.0
    assert not result.identical
    drop(src, tmp_path / "d", ["cls.*"])
    result = diff(src, tmp_path / "d")
    assert result.summary == {"identical": 69, "only_in_a": 5}
    code, out, _ = run(src, tmp_path / "d")
    assert code == 1
    assert "only_in_a: 5" in out.splitlines()


def test_tolerances_switch_changed_to_close(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 64)).astype(np.float32)
    a = save(tmp_path / "a.safetensors", {"w": w})
    b = save(tmp_path / "b.safetensors", {"w": w + np.float32(1e-4)})
    assert diff(a, b).tensors[0].status == "changed"
    t = diff(a, b, atol=2e-4).tensors[0]
    assert t.status == "close" and t.max_abs == pytest.approx(1e-4, rel=0.1)
    assert diff(a, b, rtol=1.0, atol=1e-3).identical
    code, _, _ = run(a, b, "--atol", "2e-4")
    assert code == 0
    code, _, _ = run(a, b)
    assert code == 1


def test_metrics_values(tmp_path):
    a = save(tmp_path / "a.safetensors", {"v": np.array([3.0, 4.0], dtype=np.float32)})
    b = save(tmp_path / "b.safetensors", {"v": np.array([4.0, 3.0], dtype=np.float32)})
    t = diff(a, b).tensors[0]
    assert t.max_abs == 1.0 and t.mean_abs == 1.0
    assert t.rel_l2 == pytest.approx(math.sqrt(2) / 5)
    assert t.cosine == pytest.approx(24 / 25)


def test_nan_on_one_side_is_a_difference(tmp_path):
    a = save(tmp_path / "a.safetensors", {"v": np.array([1.0, np.nan, np.inf], dtype=np.float32)})
    b = save(tmp_path / "b.safetensors", {"v": np.array([1.0, 2.0, np.inf], dtype=np.float32)})
    t = diff(a, b, atol=100.0).tensors[0]
    assert t.status == "changed" and t.nonfinite_mismatch == 1
    # NaN on both sides at the same place: bytes identical
    assert diff(a, a).identical
    c = save(tmp_path / "c.safetensors", {"v": np.array([1.0, np.nan, -np.inf], dtype=np.float32)})
    t = diff(a, c, atol=100.0).tensors[0]
    assert t.status == "changed" and t.nonfinite_mismatch == 2  # NaN != NaN, inf != -inf


def test_dtype_cast_and_shape_change(tmp_path):
    w = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    a = save(tmp_path / "a.safetensors", {"w": w, "x": w})
    b = save(tmp_path / "b.safetensors", {"w": w.astype(np.float16), "x": w.reshape(4, 3)})
    ts = {t.name: t for t in diff(a, b).tensors}
    assert ts["w"].status == "dtype_mismatch" and ts["w"].dtype_b == "F16"
    assert ts["w"].max_abs is not None and ts["w"].max_abs < 1e-3
    assert ts["w"].cosine == pytest.approx(1.0)
    assert ts["x"].status == "shape_mismatch" and ts["x"].shape_b == (4, 3)
    ts = {t.name: t for t in diff(a, b, names_only=True).tensors}
    assert ts["w"].status == "dtype_mismatch" and ts["x"].status == "shape_mismatch"


def test_prefixes_and_normalize(tmp_path):
    w = np.ones((2, 2), dtype=np.float32)
    a = save(tmp_path / "a.safetensors", {"bert.encoder.x.weight": w, "bert.LayerNorm.gamma": w[0]})
    b = save(
        tmp_path / "b.safetensors", {"module.encoder.x.weight": w, "module.LayerNorm.weight": w[0]}
    )
    assert diff(a, b).summary == {"only_in_a": 2, "only_in_b": 2}
    result = diff(a, b, strip_prefix_a="bert.", strip_prefix_b="module.", normalize=True)
    assert result.identical and result.summary == {"identical": 2}
    code, out, _ = run(a, b, "--strip-prefix-a", "bert.", "--normalize", "--json")
    assert code == 0
    obj = json.loads(out)
    assert obj["identical"] is True and obj["summary"] == {"identical": 2}


def test_normalize_folds_separately_stored_aliases(model_store, tmp_path):
    from safetensors.torch import save_file as save_torch

    state = {k: v.clone() for k, v in reference_state(model_store("bert", "bin")).items()}
    save_torch(state, str(tmp_path / "both.safetensors"), metadata={"format": "pt"})
    plain = diff(tmp_path / "both.safetensors", model_store("bert"))
    assert plain.summary == {"identical": 74, "only_in_a": 2}
    assert diff(tmp_path / "both.safetensors", model_store("bert"), normalize=True).identical


def test_json_schema_and_grouped_text(model_store, tmp_path):
    src = model_store("bert")
    reinit(src, tmp_path / "r", top_layers=2)
    code, out, _ = run(src, tmp_path / "r", "--json")
    assert code == 1
    obj = json.loads(out)
    assert set(obj) >= {"identical", "summary", "tensors"}
    assert obj["identical"] is False
    assert sum(obj["summary"].values()) == 74
    assert all(set(t) >= JSON_KEYS for t in obj["tensors"])
    code, out, _ = run(src, tmp_path / "r")
    assert "bert.encoder.layer.2  16 changed" in out
    assert "bert.encoder.layer.3  16 changed" in out
    assert "bert.encoder.layer.1 " not in out
    code, out, _ = run(src, tmp_path / "r", "--all")
    assert out.count("identical") >= 42


def test_errors_exit_2(tmp_path, model_store):
    code, out, err = run(tmp_path / "nope", model_store("bert"))
    assert code == 2 and err.startswith("Error: no such file or directory")
    code, _, err = run(model_store("bert"), model_store("bert"), "-p", "zzz*")
    assert code == 2 and err.startswith("Error: pattern matches no tensor (zzz*)")


finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)
values = st.lists(
    st.one_of(finite, st.just(float("nan")), st.just(float("inf"))), min_size=1, max_size=20
)


@settings(max_examples=40, deadline=None)
@given(xs=values, ys=values, atol=st.sampled_from([0.0, 1e-3, 10.0]))
def test_property_symmetry_and_self(tmp_path_factory, xs, ys, atol):
    d = tmp_path_factory.mktemp("prop")
    n = min(len(xs), len(ys))
    a = save(
        d / "a.safetensors",
        {"t": np.array(xs[:n], dtype=np.float32), "only_a": np.zeros(1, np.float32)},
    )
    b = save(
        d / "b.safetensors",
        {"t": np.array(ys[:n], dtype=np.float32), "only_b": np.zeros(1, np.float32)},
    )
    ab, ba = diff(a, b, atol=atol), diff(b, a, atol=atol)
    mirror = {"only_in_a": "only_in_b", "only_in_b": "only_in_a"}
    sab = {t.name: t for t in ab.tensors}
    sba = {t.name: t for t in ba.tensors}
    assert sab.keys() == sba.keys()
    for name, t in sab.items():
        u = sba[name]
        assert mirror.get(t.status, t.status) == u.status
        assert t.max_abs == u.max_abs and t.nonfinite_mismatch == u.nonfinite_mismatch
        if t.cosine is not None:
            assert u.cosine == pytest.approx(t.cosine)
    assert diff(a, a, atol=atol).differences() == []


def test_names_only_reads_headers_alone(model_store):
    import subprocess
    import sys

    a, b = model_store("bert"), model_store("bert", "safetensors-sharded")
    code = (
        "import sys\n"
        "from ckptsurgeon.tools.compare import diff\n"
        f"r = diff({str(a)!r}, {str(b)!r}, names_only=True)\n"
        "assert r.summary == {'same_header': 74}, r.summary\n"
        "assert 'numpy' not in sys.modules and 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_multi_chunk_metrics_with_identical_leading_chunks(tmp_path):
    """Chunks that agree byte for byte still count in the norms and the mean."""
    from ckptsurgeon.tools.compare import CHUNK_ELEMS

    rng = np.random.default_rng(1)
    n = CHUNK_ELEMS * 2 + 1000
    a = rng.standard_normal(n).astype(np.float32)
    b = a.copy()
    b[CHUNK_ELEMS * 2 + 10 :] += np.float32(0.5)  # only the last chunk differs
    b[CHUNK_ELEMS + 5] = np.nan  # a NaN on one side in the middle chunk
    pa = save(tmp_path / "a.safetensors", {"w": a})
    pb = save(tmp_path / "b.safetensors", {"w": b})
    t = diff(pa, pb).tensors[0]
    fa, fb = a.astype(np.float64), b.astype(np.float64)
    ok = np.isfinite(fb)
    d = fa[ok] - fb[ok]
    assert t.status == "changed" and t.nonfinite_mismatch == 1
    assert t.max_abs == pytest.approx(np.abs(d).max())
    assert t.mean_abs == pytest.approx(np.abs(d).mean())
    assert t.rel_l2 == pytest.approx(np.linalg.norm(d) / np.linalg.norm(fa[ok]), rel=1e-9)
    cos = fa[ok] @ fb[ok] / (np.linalg.norm(fa[ok]) * np.linalg.norm(fb[ok]))
    assert t.cosine == pytest.approx(cos, rel=1e-12)


def test_a_bare_pattern_string_is_one_pattern_in_every_api_function(model_store, tmp_path):
    """``diff(a, b, "bert.encoder.layer.3.*")`` compares that layer only: a bare string is one
    pattern, not a sequence of one-character patterns (which matched every tensor)."""
    import ckptsurgeon

    src = model_store("bert", "safetensors")
    out = tmp_path / "out"
    reinit(src, out, top_layers=1)  # layer 3 changes, nothing else
    layer3 = "bert.encoder.layer.3.*"
    res = diff(src, out, layer3)
    assert res.tensors and all(t.name.startswith("bert.encoder.layer.3.") for t in res.tensors)
    assert res.summary == {"changed": 16}  # the 16 tensors of layer 3, not all 43
    res = diff(src, out, "*", "bert.encoder.layer.3.*")
    assert res.identical and not any(".layer.3." in t.name for t in res.tensors)
    info = ckptsurgeon.inspect(src, "*.LayerNorm.bias")
    assert info.tensors and all(t.name.endswith(".LayerNorm.bias") for t in info.tensors)
    for call in (
        lambda: ckptsurgeon.drop(src, tmp_path / "d", "cls.*", dry_run=True),
        lambda: ckptsurgeon.reinit(src, tmp_path / "r", "cls.*", dry_run=True),
        lambda: ckptsurgeon.cast(src, tmp_path / "c", "bf16", "cls.*", dry_run=True),
    ):
        changed = call().plan.changed()
        assert changed and all(t.name.startswith("cls.") for t in changed)


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
