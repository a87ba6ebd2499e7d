"""The README stays true: its transcripts run as written and its reference matches --help.

Regenerate the reference after changing a command: ``python tests/test_readme.py --write``.
After changing the tests, run the suite in two fresh clones (one with ../shared beside it, one
without) and put their outputs in: ``python tests/test_readme.py --test-transcripts A.txt B.txt``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ckptsurgeon.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BEGIN, END = "<!-- help:begin -->", "<!-- help:end -->"


def help_reference() -> str:
    parts = []
    runner = CliRunner()
    commands = ["", *sorted(main.commands)]
    for name in commands:
        args = [name, "--help"] if name else ["--help"]
        out = runner.invoke(main, args, prog_name="ckptsurgeon").stdout
        title = f"ckptsurgeon {name}".strip()
        parts.append(f"### `{title}`\n\n```text\n{out.rstrip()}\n```\n")
    return "\n".join(parts)


def console_blocks(text: str) -> list[list[tuple[str, str]]]:
    """Every ```console block as [(command, expected stdout)]."""
    blocks = []
    for body in re.findall(r"```console\n(.*?)```", text, re.S):
        steps: list[tuple[str, list[str]]] = []
        for line in body.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            elif steps:
                steps[-1][1].append(line)
        blocks.append([(cmd, "\n".join(out)) for cmd, out in steps])
    return blocks


def test_help_reference_in_sync():
    text = README.read_text()
    assert BEGIN in text and END in text
    current = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert current == help_reference().strip(), "run: python tests/test_readme.py --write"


def test_every_command_has_help_and_is_documented():
    text = README.read_text()
    for name, cmd in main.commands.items():
        assert cmd.help, name
        assert f"ckptsurgeon {name}" in text, name


def test_readme_has_two_setup_commands():
    text = README.read_text()
    setup = re.findall(r"```sh\n(.*?)```", text, re.S)
    assert len(setup) >= 2
    assert "ckptsurgeon reinit" in setup[0] and "pytest" in setup[1]
    # the transcript shows the main set-up command itself
    assert setup[0].strip() in [cmd for block in console_blocks(text) for cmd, _ in block]
    ci = (ROOT / ".ci" / "run").read_text()
    assert setup[1].strip().splitlines()[-1].split("&& ")[-1] in ci


def run_transcript(block: list[tuple[str, str]], cwd: Path) -> list[tuple[str, str, str]]:
    """Run a transcript's commands in ``cwd``: [(command, stdout, stderr)]."""
    (cwd / "examples").symlink_to(ROOT / "examples")
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    results = []
    for cmd, _ in block:
        real = cmd
        if real.startswith("pip install"):
            # the set-up step: installing is CI's job here; run what follows it
            real = real.split(" && ", 1)[1] if " && " in real else ""
        real = (
            real.replace("python ", f"{sys.executable} ", 1) if real.startswith("python ") else real
        )
        proc = subprocess.run(real, shell=True, cwd=cwd, capture_output=True, text=True, env=env)
        results.append((cmd, proc.stdout, proc.stderr))
    return results


@pytest.mark.parametrize("index", range(len(console_blocks(README.read_text()))))
def test_transcripts_run_as_written(tmp_path, index):
    block = console_blocks(README.read_text())[index]
    # "[...]" lines stand for output left out of the README (pip's)
    expected = {
        cmd: "\n".join(ln for ln in out.splitlines() if not ln.startswith("["))
        for cmd, out in block
    }
    for cmd, out, err in run_transcript(block, tmp_path):
        assert out.rstrip() == expected[cmd].rstrip(), f"{cmd}\n{err}"


def test_python_api_snippets_run(tmp_path):
    snippets = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert snippets
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    subprocess.run(
        [sys.executable, "examples/make_tiny_bert.py", "tiny-bert"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    for code in snippets:
        subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)


def rewrite_transcripts(text: str) -> str:
    import tempfile

    def redo(match: re.Match[str]) -> str:
        block = console_blocks(match.group(0))[0]
        with tempfile.TemporaryDirectory() as tmp:
            ran = run_transcript(block, Path(tmp))
        body = "".join(
            f"$ {cmd}\n" + ("[pip's installation output]\n" if cmd.startswith("pip ") else "") + out
            for cmd, out, _ in ran
        )
        return f"```console\n{body}```"

    return re.sub(r"```console\n(.*?)```", redo, text, flags=re.S)


_ENVIRONMENT_LINES = ("platform ", "rootdir:", "configfile:", "testpaths:", "plugins:", "cachedir:")


def write_test_transcripts(with_shared: Path, without: Path) -> None:
    """Put two pytest outputs of fresh clones (one with ../shared beside it, one without) into
    the README's test transcripts, leaving out the lines that name this machine."""
    command = "$ pip install torch==2.13.0 -e '.[test]' && python -m pytest"
    text = README.read_text()
    old = _transcript_blocks(text)
    new = []
    for run in (with_shared, without):
        lines = [ln for ln in run.read_text().splitlines() if not ln.startswith(_ENVIRONMENT_LINES)]
        new.append(f"{command}\n...\n" + "\n".join(lines).strip() + "\n")
    for i, block in enumerate(new):
        if i < len(old):
            text = text.replace(old[i], block, 1)
        else:  # the second block goes right after the first
            anchor = f"```text\n{new[0]}```\n"
            note = (
                "\nThe same command in a clone on its own, without `../shared` beside it: the "
                "two tests over\n`../shared/real-checkpoints` each collect as one skipped test.\n"
                f"\n```text\n{block}```\n"
            )
            text = text.replace(anchor, anchor + note, 1)
    README.write_text(text)


def _transcript_blocks(text: str) -> list[str]:
    """The ```text blocks that show a test run (``collected N items``)."""
    return [b for b in re.findall(r"```text\n(.*?)```", text, re.S) if "collected " in b]


def _collected(shared: str | None) -> dict[str, int]:
    """Tests per file as pytest collects them here (``shared``: where ../shared is taken
    from; a path that does not exist stands for a clone without it)."""
    env = dict(os.environ)
    if shared is not None:
        env["CKPTSURGEON_SHARED"] = shared
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    counts: dict[str, int] = {}
    for line in proc.stdout.splitlines():
        if "::" in line:
            name = line.split("::", 1)[0]
            counts[name] = counts.get(name, 0) + 1
    return counts


def test_the_test_transcripts_are_what_this_tree_collects(tmp_path):
    """The README's test transcript said 468 tests where a fresh clone collected 454: each
    transcript's files and counts must be what pytest collects, with ../shared (the first) and
    without it (the second)."""
    from conftest import REAL

    blocks = _transcript_blocks(README.read_text())
    assert len(blocks) == 2, "a transcript with ../shared and one without"
    for block, shared in zip(blocks, (None, str(tmp_path / "no-shared")), strict=True):
        if shared is None and not REAL.is_dir():
            continue  # this tree has no ../shared beside it: only the second can be checked
        shown: dict[str, int] = {}
        current = ""
        for line in block.splitlines():  # a file with many tests goes on in lines of dots
            m = re.match(r"^(?:(tests/\S+\.py) )?([.sFEx]+)\s*(\[|$)", line)
            if m is not None and (m.group(1) or current):
                current = m.group(1) or current
                shown[current] = shown.get(current, 0) + len(m.group(2))
            elif line.strip():
                current = ""
        m = re.search(r"collected (\d+) items(?: / \d+ deselected / (\d+) selected)?", block)
        assert m is not None
        total = int(m.group(2) or m.group(1))  # the tests that ran (slow ones are deselected)
        counts = _collected(shared)
        assert shown == counts, "run the suite in a fresh clone and paste its output"
        assert total == sum(counts.values())


if __name__ == "__main__" and "--test-transcripts" in sys.argv:
    i = sys.argv.index("--test-transcripts")
    write_test_transcripts(Path(sys.argv[i + 1]), Path(sys.argv[i + 2]))

if __name__ == "__main__" and "--write" in sys.argv:
    import os

    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # as conftest sets it for the tests
    README.write_text(rewrite_transcripts(README.read_text()))
    text = README.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{BEGIN}\n{help_reference()}\n{END}{tail}")
    print("README.md reference updated")
