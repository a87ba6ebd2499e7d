"""The command line through CliRunner: exact output, JSON, exit codes, destinations."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import reference_state
from test_hardening import assert_clean_error, cli, leftovers, tree_hash

from ckptsurgeon import PatternError, convert, drop, inspect, reinit
from ckptsurgeon.cli import main
from ckptsurgeon.formats.safetensors import build_header


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def test_inspect_text(model_store):
    src = model_store("bert-seqcls", "safetensors")
    code, out, err = run("inspect", src, "-p", "*pooler*")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "format:     safetensors"
    assert lines[2:7] == [
        "tensors:    2",
        "parameters: 1,056",
        "bytes:      4,224 (4.2 KB)",
        "dtypes:     F32 (2)",
        "metadata:   format=pt",
    ]
    assert lines[-3:] == [
        "name                      dtype  shape     params",
        "bert.pooler.dense.bias    F32    [32]      32",
        "bert.pooler.dense.weight  F32    [32, 32]  1,024",
    ]


def test_inspect_json_and_stats(model_store):
    src = model_store("bert", "bin")
    code, out, _ = run(
        "inspect",
        src,
        "--json",
        "--stats",
        "-p",
        "*.LayerNorm.*",
        "-p",
        "cls.predictions.decoder.weight",
    )
    assert code == 0
    obj = json.loads(out)
    assert {"format", "files", "metadata", "total_params", "total_bytes", "tensors"} <= set(obj)
    assert obj["format"] == "pytorch"
    row = next(t for t in obj["tensors"] if t["name"] == "cls.predictions.decoder.weight")
    assert row["tied_to"] == "bert.embeddings.word_embeddings.weight"
    assert row["dtype"] == "F32" and row["shape"] == [99, 32] and row["params"] == 3168
    for t in obj["tensors"]:
        assert set(t) >= {
            "name",
            "dtype",
            "shape",
            "params",
            "mean",
            "std",
            "min",
            "max",
            "nan",
            "inf",
        }
    # each tied group counts once: aliases share their canonical tensor's storage
    assert obj["total_params"] == sum(t["params"] for t in obj["tensors"] if "tied_to" not in t)
    assert obj["tied"]["cls.predictions.decoder.weight"] == "bert.embeddings.word_embeddings.weight"


def test_stats_values(tmp_path):
    from safetensors.numpy import save_file

    values = np.array([1.0, 2.0, np.nan, np.inf, 3.0], dtype=np.float32)
    save_file({"v": values}, str(tmp_path / "x.safetensors"), metadata={"format": "pt"})
    code, out, _ = run("inspect", tmp_path / "x.safetensors", "--json", "--stats")
    row = json.loads(out)["tensors"][0]
    assert row["nan"] == 1 and row["inf"] == 1
    assert row["mean"] == pytest.approx(2.0) and row["min"] == 1.0 and row["max"] == 3.0
    assert row["std"] == pytest.approx(np.std([1.0, 2.0, 3.0]))


def test_reinit_cli_summary_and_json(model_store, tmp_path):
    src = model_store("bert-seqcls")
    code, out, err = run("reinit", src, tmp_path / "o", "--top-layers", "1", "--pooler", "--json")
    assert code == 0, err
    obj = json.loads(out)
    assert {"operation", "source", "destination", "seed", "std", "tensors", "skipped"} <= set(obj)
    assert obj["operation"] == "reinit" and obj["seed"] == 0 and obj["std"] == 0.02
    assert obj["reinitialized"] == 18 and obj["dry_run"] is False
    assert {t["action"] for t in obj["tensors"]} == {"reinit"}
    assert all(set(t) >= {"name", "action", "rule"} for t in obj["tensors"])
    code, out, _ = run("reinit", src, tmp_path / "p", "-p", "bert.pooler.*", "--seed", "3")
    assert code == 0
    assert "2 tensors re-initialised (1,056 parameters), " in out
    assert f"wrote {tmp_path / 'p'} (model.safetensors; " in out


def test_dry_run_writes_nothing(model_store, tmp_path):
    code, out, _ = run("drop", model_store("bert"), tmp_path / "o", "-p", "cls.*", "--dry-run")
    assert code == 0
    assert (
        out.splitlines()[-1]
        == "dry run: 5 tensors dropped (1,219 parameters), 69 kept; nothing written"
    )
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["inspect", "{tmp}/missing"],
            "Error: no such file or directory ({tmp}/missing): check the path of the checkpoint",
        ),
        (
            ["reinit", "{src}", "{tmp}/o"],
            "Error: nothing selected ({src}): give -p PATTERN, --top-layers N or --pooler",
        ),
        (
            ["drop", "{src}", "{tmp}/o"],
            "Error: nothing selected ({src}): give at least one -p PATTERN",
        ),
        (
            ["reinit", "{src}", "{src}", "-p", "*", "--overwrite"],
            "Error: destination is the source checkpoint ({src}): choose a new path for the output",
        ),
        (
            ["convert", "{src}", "{src}/model.safetensors", "--overwrite"],
            "Error: destination is the source checkpoint ({src}/model.safetensors): choose a new path for the output",
        ),
        (
            ["convert", "{src}", "{tmp}", "--max-shard-size", "5XB"],
            "Error: Invalid value for '--max-shard-size': '5XB' is not a size",
        ),
        (
            ["convert", "{src}", "{tmp}", "--max-shard-size", "autox"],
            "Error: Invalid value for '--max-shard-size': 'autox' is not a size: use a number "
            "with an optional unit (B, KB, MB, GB, TB = powers of 1000; KiB, MiB, GiB, TiB = "
            "powers of 1024), e.g. 5GB, or 'auto' (the default) or 'source'",
        ),
        (
            ["reinit", "{src}", "{tmp}/o", "--top-layers", "9"],
            "Error: --top-layers 9 is more than the 4 layers found (bert.encoder.layer.0-3) ({src}): give at most 4",
        ),
        (
            ["drop", "{src}", "{tmp}/o", "-p", "a{{b"],
            "Error: unbalanced '{{' in pattern (a{{b): close every '{{' with '}}'",
        ),
    ],
)
def test_errors_are_one_line_exit_2(model_store, tmp_path, args, message):
    src = model_store("bert")
    fmt = {"tmp": tmp_path, "src": src}
    code, out, err = run(*[a.format(**fmt) for a in args])
    assert code == 2
    assert out == ""
    assert err.startswith(message.format(**fmt)), err
    assert "Traceback" not in err


def test_existing_destination_and_overwrite(model_store, tmp_path):
    src = model_store("bert")
    dest = tmp_path / "o"
    dest.mkdir()
    (dest / "old.txt").write_text("x")
    code, _, err = run("convert", src, dest)
    assert (
        code == 2
        and err
        == f"Error: destination already exists ({dest}): choose a new path or pass --overwrite\n"
    )
    code, _, err = run("convert", src, dest, "--overwrite")
    assert code == 0, err
    assert not (dest / "old.txt").exists() and (dest / "model.safetensors").exists()
    assert not [p for p in tmp_path.iterdir() if "ckptsurgeon" in p.name]


def test_destination_inside_source_refused(src_copy):
    src = src_copy("bert")
    code, _, err = run("convert", src, src / "sub")
    assert code == 2 and err.startswith(
        f"Error: destination is inside the source directory ({src / 'sub'})"
    )


def test_debug_shows_traceback(tmp_path):
    result = CliRunner().invoke(main, ["--debug", "inspect", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and "CheckpointNotFoundError" in result.stderr


def test_module_entry_point_and_version():
    out = subprocess.run(
        [sys.executable, "-m", "ckptsurgeon", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "ckptsurgeon, version 0.1.0"


def test_help_does_not_import_torch():
    """``--help`` of the group and of every command: no torch, no transformers, no numpy."""
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from ckptsurgeon.cli import main\n"
        "for args in [[], *([name] for name in sorted(main.commands))]:\n"
        "    r = CliRunner().invoke(main, [*args, '--help'])\n"
        "    assert r.exit_code == 0 and 'Usage:' in r.stdout, (args, r.output)\n"
        "heavy = {'torch', 'transformers', 'numpy'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})


def test_warns_when_no_config_is_copied(tmp_path, model_store):
    src = model_store("bert") / "model.safetensors"
    code, _, err = run("convert", src, tmp_path / "o")
    assert code == 0
    assert err.startswith(f"Warning: no config.json was copied into {tmp_path / 'o'}")
    code, _, err = run("convert", model_store("bert"), tmp_path / "p")
    assert code == 0 and "config.json" not in err


def test_closed_stdout_pipe_is_quiet(tmp_path):

    src = tmp_path / "many.safetensors"
    header, _ = build_header([(f"t.{i}.weight", "F32", (1,), 4) for i in range(20_000)], {})
    src.write_bytes(header + b"\0" * 80_000)  # a table far larger than a pipe's buffer
    proc = subprocess.run(
        f"{sys.executable} -m ckptsurgeon inspect {src} | head -1",
        shell=True,
        capture_output=True,
        text=True,
    )
    assert proc.stdout == "format:     safetensors\n"
    assert "Error" not in proc.stderr and "Traceback" not in proc.stderr


def test_help_summary_names_every_command_and_reinit_says_how_it_chooses_rules():
    """``--help``'s summary omitted layers, resize-vocab and verify; ``reinit --help`` said
    'with BERT's rules' though ``--rules auto`` picks the model's own for most models."""
    runner = CliRunner()
    text = runner.invoke(main, ["--help"]).stdout
    summary = " ".join(text.split("\n\n")[1].split())
    assert summary == (
        "Offline surgery on transformer checkpoints: " + ", ".join(sorted(main.commands)) + "."
    )
    for name in ("layers", "resize-vocab", "verify", "apply", "diff", "inspect"):
        assert name in summary
    reinit = " ".join(runner.invoke(main, ["reinit", "--help"]).stdout.split())
    assert "by the model's own rules (or BERT's)" in reinit
    assert "with BERT's rules" not in reinit
    assert "--rules auto (default) takes BERT's rules for the BERT family" in reinit


# options that only change how the CLI renders (the API returns data): --json, --all, -q
RENDER_ONLY = {"as_json", "show_all", "quiet", "help"}


def test_every_option_of_every_command_is_a_keyword_of_its_api_function():
    """The API had drifted from the CLI (cast without threads, no revision anywhere, verify
    and the plot not at the top level). Walk the CLI: each command's function of the same
    name takes every option under the option's name."""
    import inspect

    import ckptsurgeon
    from ckptsurgeon.api import RunOptions

    for name, command in sorted(main.commands.items()):
        function = getattr(ckptsurgeon, name.replace("-", "_"))
        assert name.replace("-", "_") in ckptsurgeon.__all__, name
        keywords = set(inspect.signature(function).parameters)
        if "run_options" in keywords:  # **run_options: Unpack[RunOptions], defined once
            keywords |= set(RunOptions.__annotations__)
        for param in command.params:
            if param.name in RENDER_ONLY:
                continue
            assert param.name in keywords, f"{name}: {param.name}"
    assert callable(ckptsurgeon.write_plot) and callable(ckptsurgeon.verify)


def test_public_names_and_a_plan_without_dest(model_store, tmp_path):
    import ckptsurgeon

    shown = dir(ckptsurgeon)
    assert shown == sorted(ckptsurgeon.__all__)
    assert not {"Any", "TYPE_CHECKING", "importlib", "annotations"} & set(shown)
    src = model_store("bert")
    res = ckptsurgeon.drop(src, patterns="cls.*", dry_run=True)  # no DEST: the plan alone
    assert res.written is None and res.plan.count("drop") == 5 and res.plan.destination == ""
    res = ckptsurgeon.cast(src, dtype="bf16", dry_run=True, threads=1, revision=None)
    assert res.plan.count("cast") > 0
    with pytest.raises(ckptsurgeon.DestinationError, match="no destination given"):
        ckptsurgeon.convert(src)
    with pytest.raises(TypeError, match="unexpected keyword argument 'dryrun'"):
        ckptsurgeon.drop(src, patterns="cls.*", dryrun=True)  # type: ignore[call-arg]
    res = ckptsurgeon.diff(src, src, plot=tmp_path / "p.svg")
    assert res.identical and (tmp_path / "p.svg").read_text().startswith("<?xml")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["reinit", "--top-layers", "1", "--std", "inf"],
            "Error: --std must be a finite number, got inf (reinit): fix the value",
        ),
        (
            ["drop", "-p", "*"],
            "Error: the selection drops all 74 tensors; the output would hold none ({src}): "
            "narrow -p, or add -x for what to keep",
        ),
        (
            ["drop", "-p", "cls.*", "-x", "cls.nothing.*"],
            "Error: exclude pattern matches no tensor (cls.nothing.*): closest names: "
            "cls.predictions.bias",
        ),
        (
            ["drop", "-p", "bert.*", "--strip-prefix", "bert"],
            "Error: --strip-prefix 'bert' does not end with a dot and not every name starts with "
            "'bert.' ({src}): give --strip-prefix 'bert.' to strip it where present",
        ),
    ],
)
def test_bad_arguments_are_refused(model_store, tmp_path, args, message):
    src = model_store("bert")
    code, _, err, _ = cli(args[0], src, tmp_path / "out", *args[1:])
    assert_clean_error(code, err)
    assert err.strip() == message.format(src=src)
    assert list(tmp_path.iterdir()) == []


def test_strip_prefix_without_the_dot_when_every_name_has_it(ddp_src, tmp_path):
    src = ddp_src
    convert(src, tmp_path / "a", strip_prefix="module")
    convert(src, tmp_path / "b", strip_prefix=["module."])
    assert tree_hash(tmp_path / "a") == tree_hash(tmp_path / "b")
    assert "bert.embeddings.word_embeddings.weight" in reference_state(tmp_path / "a")


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ("[1, 2]", "config.json holds a JSON list, not an object"),
        ('"bert"', "config.json holds a JSON str, not an object"),
        ("{not json", "config.json is not valid JSON"),
        ('{"initializer_range": "0.02"}', "config.json: initializer_range is '0.02', not a number"),
        ('{"initializer_range": -1}', "initializer_range is -1; it must be a finite number >= 0"),
        ('{"pad_token_id": 1.5}', "config.json: pad_token_id is 1.5, not an integer"),
        (
            '{"pad_token_id": 99, "vocab_size": 99}',
            "pad_token_id 99 is outside the vocabulary (vocab_size 99)",
        ),
        ('{"num_hidden_layers": "4"}', "config.json: num_hidden_layers is '4', not a layer count"),
        ('{"num_hidden_layers": -2}', "num_hidden_layers is -2, not a layer count"),
        ('{"vocab_size": true}', "vocab_size is True, not a positive integer"),
    ],
)
def test_a_broken_config_is_refused_by_every_writing_command(src_copy, tmp_path, config, problem):
    src = src_copy("bert")
    (src / "config.json").write_text(config)
    before = tree_hash(src)
    for args in (["convert"], ["drop", "-p", "cls.*"], ["reinit", "-p", "cls.*", "--dry-run"]):
        code, _, err, _ = cli(args[0], src, tmp_path / "out", *args[1:])
        assert_clean_error(code, err, problem, str(src / "config.json"), "fix config.json")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
    assert tree_hash(src) == before
    # inspect still shows the weights, with the problem as a warning
    code, out, err, _ = cli("inspect", src)
    assert code == 0 and problem in err


def test_wrapped_model_hint_everywhere_the_user_meets_it(ddp_src, tmp_path):
    hint = "names start with 'module.' (saved from a wrapped model): pass --strip-prefix module."
    code, _, err, _ = cli("convert", ddp_src, tmp_path / "c")
    assert code == 0 and f"Warning: {hint}" in err
    code, _, err, _ = cli("reinit", ddp_src, tmp_path / "r", "--top-layers", "1")
    assert_clean_error(code, err, "no encoder layer stack found", hint)
    code, _, err, _ = cli("drop", ddp_src, tmp_path / "d", "-p", "cls.*")
    assert_clean_error(code, err, "pattern matches no tensor (cls.*)", hint)
    with pytest.raises(PatternError, match="pass --strip-prefix module"):
        drop(ddp_src, tmp_path / "d", "cls.*")
    code, _, err, _ = cli(
        "reinit", ddp_src, tmp_path / "r", "--top-layers", "1", "--strip-prefix", "module."
    )
    assert code == 0, err


def test_api_accepts_size_strings_and_bare_pattern_strings(model_store, tmp_path):
    src = model_store("bert")
    result = convert(src, tmp_path / "sharded", max_shard_size="50KB")
    assert "model.safetensors.index.json" in result.written.files
    a = drop(src, tmp_path / "a", "cls.*", exclude="cls.predictions.transform.dense.*")
    b = drop(src, tmp_path / "b", ["cls.*"], exclude=["cls.predictions.transform.dense.*"])
    assert a.plan.tensors == b.plan.tensors and a.plan.count("drop") == 3
    assert a.plan.steps[0]["patterns"] == ["cls.*"]
    r = reinit(src, tmp_path / "r", "cls.predictions.transform.dense.*", dry_run=True)
    assert r.plan.count("reinit") == 2
    assert sorted(t.name for t in inspect(src, "cls.predictions.transform.dense.*").tensors) == [
        "cls.predictions.transform.dense.bias",
        "cls.predictions.transform.dense.weight",
    ]


def test_inspect_counts_tied_groups_once(model_store):
    safe = inspect(model_store("bert", "safetensors"))
    for layout in ("bin", "bin-legacy"):
        tied = inspect(model_store("bert", layout))
        assert (tied.total_params, tied.total_bytes) == (safe.total_params, safe.total_bytes)
        assert tied.to_json()["tied"] == {
            "cls.predictions.decoder.bias": "cls.predictions.bias",
            "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
        }
    assert safe.to_json()["tied"] == {}
