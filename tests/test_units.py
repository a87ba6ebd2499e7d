"""Pure pieces: sizes, patterns, shard planning, header layout (with property tests)."""

from __future__ import annotations

import fnmatch
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptsurgeon import PatternError
from ckptsurgeon.dtypes import DTYPES
from ckptsurgeon.patterns import expand_braces, matches, select
from ckptsurgeon.run.layout import OutTensor, data_order, plan_shards, shard_filename
from ckptsurgeon.sizes import format_size, parse_size


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("5GB", 5 * 10**9),
        ("5gb", 5 * 10**9),
        ("500MB", 500 * 10**6),
        ("1.5GB", 1_500_000_000),
        ("10KB", 10_000),
        ("2KiB", 2048),
        ("1MiB", 1 << 20),
        ("3GiB", 3 << 30),
        ("1TB", 10**12),
        ("1234", 1234),
        ("64B", 64),
    ],
)
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "GB", "5XB", "-1GB", "0", "1.2.3MB", "5 G B"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


def test_format_size():
    assert format_size(440_123_456) == "440.1 MB"
    assert format_size(999) == "999 B"


def test_brace_expansion():
    assert expand_braces("a.{1..3}.b") == ["a.1.b", "a.2.b", "a.3.b"]
    assert expand_braces("a.{3..1}") == ["a.3", "a.2", "a.1"]
    assert expand_braces("*.{query,key}.weight") == ["*.query.weight", "*.key.weight"]
    assert expand_braces("{a,{b,c}}{1..2}") == ["a1", "a2", "b1", "b2", "c1", "c2"]
    assert expand_braces("plain") == ["plain"]
    with pytest.raises(PatternError, match=r"unbalanced '\{' in pattern"):
        expand_braces("a{b")
    with pytest.raises(PatternError, match=r"unbalanced '\}' in pattern"):
        expand_braces("a}b")


def test_glob_semantics_and_the_layer_trap():
    names = [f"bert.encoder.layer.{i}.attention.self.query.weight" for i in range(12)]
    assert matches(names[0], "*query*")  # '*' crosses dots
    assert not matches(names[0], "*QUERY*")  # case-sensitive
    trap = select(names, ["bert.encoder.layer.1*"])
    assert trap == [names[1], names[10], names[11]]
    assert select(names, ["bert.encoder.layer.1.*"]) == [names[1]]
    assert select(names, ["bert.encoder.layer.{9..11}.*"]) == names[9:]
    assert select(names, ["*"], ["*.layer.{0..10}.*"]) == [names[11]]


def test_no_match_suggests_closest():
    names = ["bert.pooler.dense.weight", "bert.pooler.dense.bias", "cls.predictions.bias"]
    with pytest.raises(PatternError) as err:
        select(names, ["bert.poolr.*"])
    assert str(err.value).startswith(
        "pattern matches no tensor (bert.poolr.*): closest names: bert.pooler.dense"
    )


name_st = st.text(alphabet="abc.01", min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(
    names=st.lists(name_st, unique=True, max_size=20),
    pattern=st.text(alphabet="abc.01*?", min_size=1, max_size=6),
)
def test_select_equals_fnmatchcase(names, pattern):
    assert select(names, [pattern], require_match=False) == [
        n for n in names if fnmatch.fnmatchcase(n, pattern)
    ]


@settings(max_examples=300, deadline=None)
@given(sizes=st.lists(st.integers(0, 1000), max_size=40), limit=st.integers(1, 1500))
def test_plan_shards_properties(sizes, limit):
    items = [(f"t{i}", s) for i, s in enumerate(sizes)]
    shards = plan_shards(items, limit)
    flat = [n for shard in shards for n in shard]
    assert flat == [n for n, _ in items]  # every tensor once, order kept
    size = dict(items)
    for shard in shards:
        total = sum(size[n] for n in shard)
        assert total <= limit or len(shard) == 1  # only a lone oversized tensor may exceed
    for a, b in itertools.pairwise(shards):
        # greedy: the next shard's first tensor did not fit
        assert sum(size[n] for n in a) + size[b[0]] > limit
    assert len(shards) >= 1


def test_shard_names_and_alignment():
    assert shard_filename(2, 10) == "model-00002-of-00010.safetensors"
    tensors = [
        OutTensor("a", "I8", (3,), 3),
        OutTensor("b", "F32", (2,), 8),
        OutTensor("c", "BF16", (1,), 2),
        OutTensor("d", "F64", (1,), 8),
    ]
    ordered = data_order(tensors)
    assert [t.name for t in ordered] == ["d", "b", "c", "a"]
    offset = 0
    for t in ordered:
        assert offset % DTYPES[t.dtype].itemsize == 0
        offset += t.nbytes


@pytest.mark.parametrize(("single", "limit"), [(True, 10**9), (False, 10**9), (False, 20)])
def test_emission_order_is_the_writers_order(tmp_path, single, limit):
    from ckptsurgeon.formats.checkpoint import Checkpoint, write_all
    from ckptsurgeon.run.layout import emission_order
    from ckptsurgeon.run.writer import write_checkpoint

    tensors = [
        OutTensor(f"t{i}", dtype, (2,), 2 * DTYPES[dtype].itemsize)
        for i, dtype in enumerate(["I8", "F32", "BF16", "F64", "F32", "U8", "F16"])
    ]
    seen: list[str] = []

    def emit(t: OutTensor, fd: int) -> None:
        seen.append(t.name)
        write_all(fd, b"\0" * t.nbytes)

    empty = Checkpoint(path=tmp_path, format="safetensors", files=[], tensors=[])
    dest = tmp_path / ("one.safetensors" if single else "dir")
    write_checkpoint(empty, dest, tensors, emit, {}, max_shard_size=limit)
    assert seen == [t.name for ordered in emission_order(tensors, dest, limit) for t in ordered]


def test_the_command_line_tunes_the_allocator_before_its_modules_load(
    monkeypatch: pytest.MonkeyPatch,
):
    """The console script asks glibc to keep freed buffers (fewer fresh pages per chunk) before
    it imports the CLI; the library itself leaves its host's allocator alone."""
    import sys

    import ckptsurgeon.__main__ as entry
    from ckptsurgeon import libc

    calls: list[str] = []
    monkeypatch.setattr(libc, "keep_freed_buffers", lambda: calls.append("tuned") or True)
    monkeypatch.setattr(sys, "argv", ["ckptsurgeon", "--version"])
    with pytest.raises(SystemExit) as exc:
        entry.run()
    assert exc.value.code == 0
    assert calls == ["tuned"]


def test_glibc_takes_the_allocator_settings():
    import platform

    from ckptsurgeon.libc import keep_freed_buffers

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert keep_freed_buffers() is True
