"""DEST: never SRC, inside SRC or around it (judged on resolved paths); ``--overwrite`` replaces
only a checkpoint or ckptsurgeon's own output; ``--dry-run`` checks DEST as a real run would."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_hardening import assert_clean_error, cli, leftovers, tree_hash

from ckptsurgeon import convert
from ckptsurgeon.errors import DestinationError


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_overwrite_refuses_a_destination_that_contains_the_source(model_store, tmp_path):
    inner = _copy(model_store("bert"), tmp_path / "outer" / "inner")
    before = tree_hash(tmp_path / "outer")
    code, out, err, _ = cli("convert", inner, tmp_path / "outer", "--overwrite")
    assert_clean_error(code, err, "destination contains the source checkpoint")
    assert tree_hash(tmp_path / "outer") == before


def test_overwrite_refuses_the_project_folder_around_the_model(model_store, tmp_path):
    proj = tmp_path / "proj"
    _copy(model_store("bert"), proj / "model")
    (proj / "code").mkdir()
    (proj / "code" / "train.py").write_text("print('my work')\n")
    before = tree_hash(proj)
    code, _, err, _ = cli("reinit", proj / "model", proj, "--top-layers", "1", "--overwrite")
    assert_clean_error(code, err, "destination contains the source checkpoint", str(proj))
    assert tree_hash(proj) == before


def test_overwrite_refuses_the_folder_of_a_single_file_source(model_store, tmp_path):
    tb2 = _copy(model_store("bert"), tmp_path / "tb2")
    before = tree_hash(tb2)
    code, _, err, _ = cli("convert", tb2 / "model.safetensors", tb2, "--overwrite")
    assert_clean_error(code, err, "destination contains the source checkpoint")
    assert tree_hash(tb2) == before and (tb2 / "config.json").is_file()


def test_containment_is_judged_on_resolved_paths(model_store, tmp_path):
    inner = _copy(model_store("bert"), tmp_path / "outer" / "inner")
    (tmp_path / "src-link").symlink_to(inner)
    (tmp_path / "outer-link").symlink_to(tmp_path / "outer")
    before = tree_hash(tmp_path / "outer")
    for src, dest, what in [
        (tmp_path / "src-link", tmp_path / "outer", "contains the source"),
        (inner, tmp_path / "outer-link", "contains the source"),
        (inner, tmp_path / "outer" / "x" / ".." / "inner", "is the source"),
        (tmp_path / "src-link", inner / "sub", "inside the source"),
    ]:
        for args in (["convert"], ["drop", "-p", "cls.*"]):
            code, _, err, _ = cli(args[0], src, dest, *args[1:], "--overwrite")
            assert_clean_error(code, err, what)
    assert tree_hash(tmp_path / "outer") == before


def test_overwrite_refuses_a_directory_with_foreign_files(model_store, tmp_path):
    important = tmp_path / "important"
    important.mkdir()
    (important / "thesis.tex").write_text("\\documentclass{article}\n")
    (important / "config.json").write_text("{}\n")
    code, _, err, _ = cli("convert", model_store("bert"), important, "--overwrite")
    assert_clean_error(code, err, "'thesis.tex'", "remove DEST by hand")
    assert (important / "thesis.tex").read_text() == "\\documentclass{article}\n"
    assert leftovers(tmp_path) == []
    # nested too
    (important / "thesis.tex").unlink()
    (important / "sub").mkdir()
    (important / "sub" / "data.csv").write_text("1,2\n")
    code, _, err, _ = cli("convert", model_store("bert"), important, "--overwrite")
    assert_clean_error(code, err, "'sub/data.csv'")


def test_overwrite_refuses_a_file_that_is_not_a_checkpoint(model_store, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me\n")
    code, _, err, _ = cli("convert", model_store("bert"), notes, "--overwrite")
    assert_clean_error(code, err, "is a file that is not a checkpoint")
    assert notes.read_text() == "keep me\n"
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    code, _, err, _ = cli("convert", model_store("bert"), link, "--overwrite")
    assert_clean_error(code, err, "destination is a symbolic link")


def test_overwrite_replaces_checkpoints_and_its_own_outputs(model_store, tmp_path):
    src = _copy(model_store("bert"), tmp_path / "src")
    (src / "train.py").write_text("print('copied beside the weights')\n")
    # a save_pretrained directory (weights, config, tokenizer files, a module folder)
    hub = _copy(model_store("bert", "safetensors-sharded"), tmp_path / "hub")
    (hub / "README.md").write_text("# card\n")
    convert(src, hub, overwrite=True)
    assert (hub / "train.py").is_file() and not (hub / "model.safetensors.index.json").exists()
    # ckptsurgeon's own output, holding the copied train.py: replaceable again
    convert(src, hub, overwrite=True, max_shard_size="20KB")
    assert (hub / "model.safetensors.index.json").is_file()
    # an empty directory
    (tmp_path / "empty").mkdir()
    convert(src, tmp_path / "empty", overwrite=True)
    # but a file added to ckptsurgeon's output by hand is protected
    (hub / "results.csv").write_text("acc,0.9\n")
    with pytest.raises(DestinationError, match="'results.csv'"):
        convert(src, hub, overwrite=True)


@pytest.mark.parametrize("verb", [["convert"], ["drop", "-p", "cls.*"], ["reinit", "-p", "cls.*"]])
def test_dry_run_checks_the_destination(model_store, tmp_path, verb):
    src = _copy(model_store("bert"), tmp_path / "outer" / "src")
    (tmp_path / "exists").mkdir()
    cases = [
        (tmp_path / "exists", [], "destination already exists"),
        (src / "inside", [], "destination is inside the source directory"),
        (tmp_path / "outer", ["--overwrite"], "destination contains the source checkpoint"),
        (tmp_path / "missing" / "out", [], "the destination's parent directory does not exist"),
    ]
    for dest, extra, message in cases:
        code, _, err, _ = cli(verb[0], src, dest, *verb[1:], *extra, "--dry-run")
        assert_clean_error(code, err, message)
    code, out, err, _ = cli(verb[0], src, tmp_path / "new", *verb[1:], "--dry-run")
    assert code == 0 and "nothing written" in out and not (tmp_path / "new").exists()
