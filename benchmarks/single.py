"""The single-checkpoint suites: bert-base and bert-large against `cp`+sync, the naive script
and the transformers way; the ~6 GB 4-shard decoder through every command; recipes against their
steps run one by one; random numbers against torch. run.py runs them, then the other suites.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import (  # noqa: E402
    CACHE,
    CKPT,
    OUT,
    PY,
    Job,
    Report,
    Runs,
    ck,
    cp_sync,
    paired,
    warm,
)


def bert_suite(
    report: Report, name: str, src: Path, layers: int, reps: int, baselines: bool
) -> dict[str, Runs]:
    warm(src)
    jobs: dict[str, Job] = {
        "convert": ck("convert", src, OUT / "c"),
        "drop cls.*": ck("drop", src, OUT / "d", "-p", "cls.*"),
        "reinit top3+pooler": ck("reinit", src, OUT / "re", "--top-layers", 3, "--pooler"),
        "reinit top3+pooler --rules model": ck(
            "reinit", src, OUT / "rm", "--top-layers", 3, "--pooler", "--rules", "model"
        ),
        "reinit all": ck("reinit", src, OUT / "all", "-p", "*"),
        "cast bf16": ck("cast", src, OUT / "bf16", "--dtype", "bf16"),
    }
    res = paired(jobs, cp_sync(src), reps)
    res["cp+sync"] = res.pop("reference")
    # diff needs the reinit output to exist: make it once, untimed
    reinit_out = CACHE / f"{name}-re"
    subprocess.run(
        [*CKPT, "reinit", src, reinit_out, "--top-layers", "3", "--pooler", "--overwrite"],
        check=True,
        capture_output=True,
    )
    diffs = {
        "diff vs reinit": ck("diff", src, reinit_out),
        "diff --names-only": ck("diff", "--names-only", src, reinit_out),
    }
    res.update({k: v for k, v in paired(diffs, cp_sync(src), reps).items() if k != "reference"})
    vs: dict[str, Runs] = {}
    if baselines:
        others = {
            "naive script": (
                [
                    PY,
                    str(HERE / "naive_reinit.py"),
                    str(src),
                    str(OUT / "n"),
                    "bert.encoder.layer",
                    str(layers),
                    "3",
                    "--pooler",
                ],
                False,
            ),
            "transformers way": (
                [PY, str(HERE / "transformers_reinit.py"), str(src), str(OUT / "t"), "3"],
                False,
            ),
        }
        vs = paired(others, jobs["reinit top3+pooler"], reps)
        vs.pop("reference")
        model_vs = paired(
            {"transformers way ": others["transformers way"]},
            jobs["reinit top3+pooler --rules model"],
            reps,
        )
        model_vs.pop("reference")
        vs["transformers way vs --rules model"] = model_vs["transformers way "]
    for job, runs in res.items():
        extra = [f"{runs.ratio:.2f}x" if runs.ratios else ""]
        if job == "reinit top3+pooler" and vs:
            extra += [f"{vs[k].ratio:.2f}x faster" for k in ("naive script", "transformers way")]
        if job == "reinit top3+pooler --rules model" and vs:
            extra += ["", f"{vs['transformers way vs --rules model'].ratio:.2f}x faster"]
        report.add(name, job, runs, *extra)
    for job, runs in vs.items():
        if job != "transformers way vs --rules model":
            report.add(name, job, runs)
    res.update(vs)
    return res


def recipe_suite(
    report: Report, name: str, src: Path, stack: str, head: str, dtype: str, reps: int
) -> dict[str, Runs]:
    """The 4-step release recipe in one pass, against its steps alone and chained as commands."""
    warm(src)
    recipe = CACHE / "release.yaml"
    recipe.write_text(
        "steps:\n"
        "  - {op: rename, strip_prefix: ['module.']}\n"
        f"  - {{op: drop, patterns: ['{head}']}}\n"
        "  - {op: reinit, top_layers: 3, seed: 0, rules: bert}\n"
        f"  - {{op: cast, dtype: {dtype}}}\n"
    )
    shard = ["--max-shard-size", "1.6GB"]
    # the reinit step alone selects the same top 3 layers by pattern (its names are prefixed)
    from ckptsurgeon.formats.checkpoint import open_checkpoint
    from ckptsurgeon.plan.selection import find_layer_stacks

    names = [n.removeprefix("module.") for n in open_checkpoint(src).names]
    count = len(find_layer_stacks(names)[stack])
    top3 = f"module.{stack}.{{{count - 3}..{count - 1}}}.*"
    steps: dict[str, Job] = {
        "step alone: rename": ck("rename", src, OUT / "s", "--strip-prefix", "module.", *shard),
        "step alone: drop": ck("drop", src, OUT / "s", "-p", f"module.{head}", *shard),
        "step alone: reinit top3": ck(
            "reinit", src, OUT / "s", "-p", top3, "--rules", "bert", *shard
        ),
        f"step alone: cast {dtype}": ck("cast", src, OUT / "s", "--dtype", dtype, *shard),
    }
    chain = " && ".join(
        [
            f"{' '.join(CKPT)} rename {src} {OUT / 'a'} --strip-prefix module. {' '.join(shard)}",
            f"{' '.join(CKPT)} drop {OUT / 'a'} {OUT / 'b'} -p '{head}' {' '.join(shard)}",
            f"{' '.join(CKPT)} reinit {OUT / 'b'} {OUT / 'c'} --top-layers 3 --rules bert {' '.join(shard)}",
            f"{' '.join(CKPT)} cast {OUT / 'c'} {OUT / 'd'} --dtype {dtype} {' '.join(shard)}",
        ]
    )  # fmt: skip
    res = paired(steps, cp_sync(src), reps)
    res["cp+sync"] = res.pop("reference")
    slowest = max((r for r in res if r.startswith("step alone")), key=lambda r: res[r].median)
    one = {
        "recipe (4 steps, one pass)": ck("apply", recipe, src, OUT / "r", *shard),
        "same 4 steps chained": (chain, True),
    }
    direct = paired(one, steps[slowest], reps)  # the recipe against its slowest step, pair by pair
    direct.pop("reference")
    for job, runs in res.items():
        report.add(name, job, runs, f"{runs.ratio:.2f}x" if runs.ratios else "")
    for job, runs in direct.items():
        report.add(name, job, runs, f"{runs.ratio:.2f}x of '{slowest}'")
    res.update(direct)
    res["slowest step"] = res[slowest]
    return res


def layers_suite(report: Report, name: str, src: Path, keep: str, reps: int) -> float:
    """``layers`` against `cp`+sync of the bytes it writes: its own output, made once untimed,
    is what the reference copies."""
    made = CACHE / (re.sub(r"\W+", "-", name) + "-layers")
    subprocess.run(
        [*CKPT, "layers", src, made, "--keep", keep, "--overwrite"], check=True, capture_output=True
    )
    warm(src)
    warm(made)
    res = paired(
        {f"layers --keep {keep}": ck("layers", src, OUT / "l", "--keep", keep)}, cp_sync(made), reps
    )
    ref = res.pop("reference")
    for job, runs in res.items():
        report.add(name, job, runs, f"{runs.ratio:.2f}x (of its output)")
    report.add(name, "cp+sync of the layers output", ref)
    return res[f"layers --keep {keep}"].ratio


def recipe_targets(report: Report, name: str, res: dict[str, Runs]) -> None:
    one = res["recipe (4 steps, one pass)"].ratio  # paired with the slowest step itself
    chained = res["same 4 steps chained"].ratio
    report.target(
        f"{name} 4-step recipe <= 1.15x its slowest step alone",
        one <= 1.15,
        f"{one:.2f}x; the same steps chained as commands: {chained / one:.2f}x the recipe",
    )


def rng_report(report: Report) -> None:
    """Random numbers: ours on every core vs torch normal_ on one thread, same run."""
    code = r"""
import time, numpy as np, torch, os
from ckptsurgeon.rules.bert import generate, Rule
n = 1 << 27
torch.set_num_threads(1)
x = torch.empty(n)
x.normal_(0, 0.02)
t = time.perf_counter(); x.normal_(0, 0.02); torch_s = time.perf_counter() - t
out = {}
for threads in (1, os.cpu_count()):
    t = time.perf_counter()
    h = 0
    for c in generate("w", "F32", (n,), Rule("normal", 0.02), 0, threads=threads):
        h ^= hash(bytes(c[:64]))
    out[threads] = (time.perf_counter() - t, h)
print(torch_s, out[1][0], out[os.cpu_count()][0], out[1][1] == out[os.cpu_count()][1])
"""
    proc = subprocess.run(
        [PY, "-c", code], capture_output=True, text=True, check=True, cwd=HERE.parent
    )
    torch_s, one, many, same = proc.stdout.split()
    n = 1 << 27
    t_rate, o_rate, m_rate = n / float(torch_s) / 1e6, n / float(one) / 1e6, n / float(many) / 1e6
    print(
        f"random normals: torch normal_ 1 thread {t_rate:.0f} M/s; ckptsurgeon 1 thread {o_rate:.0f} M/s, {os.cpu_count()} threads {m_rate:.0f} M/s; identical across thread counts: {same}"
    )
    report.target(
        "random values >= 1.5x torch normal_ (1 thread)",
        m_rate >= 1.5 * t_rate,
        f"{m_rate / t_rate:.2f}x",
    )
    report.target("values independent of thread count", same == "True", same)
