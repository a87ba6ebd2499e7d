"""Benchmarks: ckptsurgeon against `cp`, `cp`+sync, the naive script and the transformers way.

    python benchmarks/run.py                 # everything (needs ~20 GB of free disk, ~10 min)
    python benchmarks/run.py --skip-6gb      # bert-base and bert-large only
    python benchmarks/run.py --reps 5

It builds synthetic checkpoints with real names and shapes (bert-base fp32, bert-large fp32 and
a ~6 GB 4-shard bf16 decoder-style checkpoint, the last written by ckptsurgeon's own streaming
writer), caches them in benchmarks/.cache, then times whole processes several times each,
alternating the contenders, page cache warm. It prints medians, the spread (min-max), peak RSS
(from wait4), each ckptsurgeon figure as a ratio to `cp`+sync of the same bytes and to the
naive and transformers-way scripts, and PASS/MISS for every target of issue 5.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
OUT = CACHE / "out"
PY = sys.executable
CKPT = [PY, "-m", "ckptsurgeon"]


# ---------------------------------------------------------------------------------------------
# synthetic checkpoints


def bert_specs(
    hidden: int, layers: int, inter: int, vocab: int = 30522
) -> list[tuple[str, tuple[int, ...]]]:
    """BertForPreTraining's tensors (tied decoder stored once, as save_pretrained does)."""
    specs: list[tuple[str, tuple[int, ...]]] = [
        ("bert.embeddings.word_embeddings.weight", (vocab, hidden)),
        ("bert.embeddings.position_embeddings.weight", (512, hidden)),
        ("bert.embeddings.token_type_embeddings.weight", (2, hidden)),
        ("bert.embeddings.LayerNorm.weight", (hidden,)),
        ("bert.embeddings.LayerNorm.bias", (hidden,)),
    ]
    for i in range(layers):
        p = f"bert.encoder.layer.{i}"
        for m in (
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
        ):
            specs += [(f"{p}.{m}.weight", (hidden, hidden)), (f"{p}.{m}.bias", (hidden,))]
        specs += [
            (f"{p}.attention.output.LayerNorm.weight", (hidden,)),
            (f"{p}.attention.output.LayerNorm.bias", (hidden,)),
            (f"{p}.intermediate.dense.weight", (inter, hidden)),
            (f"{p}.intermediate.dense.bias", (inter,)),
            (f"{p}.output.dense.weight", (hidden, inter)),
            (f"{p}.output.dense.bias", (hidden,)),
            (f"{p}.output.LayerNorm.weight", (hidden,)),
            (f"{p}.output.LayerNorm.bias", (hidden,)),
        ]
    specs += [
        ("bert.pooler.dense.weight", (hidden, hidden)),
        ("bert.pooler.dense.bias", (hidden,)),
        ("cls.predictions.bias", (vocab,)),
        ("cls.predictions.transform.dense.weight", (hidden, hidden)),
        ("cls.predictions.transform.dense.bias", (hidden,)),
        ("cls.predictions.transform.LayerNorm.weight", (hidden,)),
        ("cls.predictions.transform.LayerNorm.bias", (hidden,)),
        ("cls.seq_relationship.weight", (2, hidden)),
        ("cls.seq_relationship.bias", (2,)),
    ]
    return specs


def decoder_specs(
    hidden: int, layers: int, inter: int, vocab: int
) -> list[tuple[str, tuple[int, ...]]]:
    specs: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}"
        specs += [(f"{p}.self_attn.{x}_proj.weight", (hidden, hidden)) for x in "qkvo"]
        specs += [
            (f"{p}.mlp.gate_proj.weight", (inter, hidden)),
            (f"{p}.mlp.up_proj.weight", (inter, hidden)),
            (f"{p}.mlp.down_proj.weight", (hidden, inter)),
            (f"{p}.input_layernorm.weight", (hidden,)),
            (f"{p}.post_attention_layernorm.weight", (hidden,)),
        ]
    specs += [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]
    return specs


def build(
    path: Path, specs: list[tuple[str, tuple[int, ...]]], dtype: str, config: dict, shard: int
) -> None:
    """Write a synthetic checkpoint with ckptsurgeon's streaming writer (memory stays flat)."""
    from ckptsurgeon.checkpoint import Checkpoint, write_all
    from ckptsurgeon.dtypes import nbytes_of
    from ckptsurgeon.init_rules import Rule, generate
    from ckptsurgeon.writer import OutTensor, write_checkpoint

    if path.exists():
        return
    print(f"building {path.name} ...", file=sys.stderr, flush=True)
    tensors = [OutTensor(n, dtype, s, nbytes_of(dtype, s)) for n, s in specs]

    def emit(t: OutTensor, fd: int) -> None:
        rule = (
            Rule("normal", 0.02)
            if len(t.shape) >= 2
            else Rule("zeros" if t.name.endswith("bias") else "ones")
        )
        for chunk in generate(t.name, t.dtype, t.shape, rule, seed=1234):
            write_all(fd, chunk)

    empty = Checkpoint(path=CACHE, format="safetensors", files=[], tensors=[])
    write_checkpoint(empty, path, tensors, emit, {}, max_shard_size=shard)
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def bert_config(hidden: int, layers: int, inter: int, heads: int) -> dict:
    return {
        "architectures": ["BertForPreTraining"],
        "model_type": "bert",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "intermediate_size": inter,
        "num_attention_heads": heads,
        "vocab_size": 30522,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "initializer_range": 0.02,
        "pad_token_id": 0,
    }


# ---------------------------------------------------------------------------------------------
# timing


@dataclass
class Runs:
    times: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)  # MiB

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def spread(self) -> str:
        return f"{min(self.times):.2f}-{max(self.times):.2f}"


TIME = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)


def run_once(cmd: Sequence[str] | str, shell: bool = False) -> tuple[float, float]:
    """Wall time and peak RSS (MiB) of one whole process.

    Peak RSS comes from GNU time's %M (the child's maximum resident set); rusage from wait4
    would report at least this script's own size, which a forked child starts from.
    """
    argv = ["/bin/sh", "-c", str(cmd)] if shell else list(cmd)
    rss_file = CACHE / "rss.txt"
    if TIME:
        argv = [TIME, "-f", "%M", "-o", str(rss_file), *argv]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):
        raise RuntimeError(f"{cmd} exited {code}")
    if TIME:
        return elapsed, int(rss_file.read_text().split()[-1]) / 1024
    return elapsed, usage.ru_maxrss / 1024


def clean_out() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)


def bench(jobs: dict[str, tuple[Sequence[str] | str, bool]], reps: int) -> dict[str, Runs]:
    """Run every job ``reps`` times, alternating jobs in each round; DEST cleaned untimed."""
    results = {name: Runs() for name in jobs}
    for _ in range(reps):
        for name, (cmd, shell) in jobs.items():
            clean_out()
            t, rss = run_once(cmd, shell)
            results[name].times.append(t)
            results[name].rss.append(rss)
    clean_out()
    return results


def warm(path: Path) -> None:
    for f in sorted(path.rglob("*")):
        if f.is_file():
            with open(f, "rb") as fh:
                while fh.read(1 << 24):
                    pass


def size_of(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ---------------------------------------------------------------------------------------------


class Report:
    def __init__(self) -> None:
        self.rows: list[list[str]] = []
        self.targets: list[tuple[str, bool, str]] = []

    def add(self, ckpt: str, job: str, runs: Runs, *ratios: str) -> None:
        self.rows.append(
            [ckpt, job, f"{runs.median:.2f}", runs.spread(), f"{max(runs.rss):.0f}", *ratios]
        )

    def target(self, what: str, ok: bool, detail: str) -> None:
        self.targets.append((what, ok, detail))

    def print(self) -> None:
        headers = [
            "checkpoint",
            "job",
            "median s",
            "spread s",
            "peak MiB",
            "vs cp+sync",
            "vs naive",
            "vs transformers",
        ]
        rows = [r + [""] * (len(headers) - len(r)) for r in self.rows]
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for r in rows:
            print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
        print()
        for what, ok, detail in self.targets:
            print(f"{'PASS' if ok else 'MISS'}  {what}: {detail}")


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x"


def bert_suite(
    report: Report, name: str, src: Path, layers: int, reps: int, baselines: bool
) -> dict[str, Runs]:
    warm(src)
    re_dest = OUT / "re"
    jobs: dict[str, tuple[Sequence[str] | str, bool]] = {
        "cp": (f"cp -r {src} {OUT / 'cp'}", True),
        "cp+sync": (f"cp -r {src} {OUT / 'cp'} && sync", True),
        "inspect": ([*CKPT, "inspect", str(src)], False),
        "convert": ([*CKPT, "convert", str(src), str(OUT / "c")], False),
        "drop cls.*": ([*CKPT, "drop", str(src), str(OUT / "d"), "-p", "cls.*"], False),
        "reinit top3+pooler": (
            [*CKPT, "reinit", str(src), str(re_dest), "--top-layers", "3", "--pooler"],
            False,
        ),
        "reinit all": ([*CKPT, "reinit", str(src), str(OUT / "all"), "-p", "*"], False),
    }
    if baselines:
        jobs["naive script"] = (
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
        )
        jobs["transformers way"] = (
            [PY, str(HERE / "transformers_reinit.py"), str(src), str(OUT / "t"), "3"],
            False,
        )
    res = bench(jobs, reps)
    # diff needs the reinit output to exist: make it once, untimed
    subprocess.run(
        [
            *CKPT,
            "reinit",
            str(src),
            str(CACHE / f"{name}-re"),
            "--top-layers",
            "3",
            "--pooler",
            "--overwrite",
        ],
        check=True,
        capture_output=True,
    )
    diffs = bench(
        {
            "diff vs reinit": ([*CKPT, "diff", str(src), str(CACHE / f"{name}-re")], False),
            "diff --names-only": (
                [*CKPT, "diff", "--names-only", str(src), str(CACHE / f"{name}-re")],
                False,
            ),
        },
        reps,
    )
    res.update(diffs)
    cps = res["cp+sync"].median
    naive = res.get("naive script")
    tfw = res.get("transformers way")
    for job, runs in res.items():
        extra = [ratio(runs.median, cps)]
        if naive and job.startswith(("reinit", "drop", "convert")):
            extra += [
                f"{naive.median / runs.median:.2f}x faster",
                f"{tfw.median / runs.median:.2f}x faster" if tfw else "",
            ]
        report.add(name, job, runs, *extra)
    return res


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--skip-6gb", action="store_true")
    parser.add_argument("--skip-large", action="store_true", help="skip bert-large")
    parser.add_argument("--skip-base", action="store_true", help="skip bert-base and its targets")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent))
    CACHE.mkdir(exist_ok=True)
    report = Report()

    base = CACHE / "bert-base-fp32"
    build(base, bert_specs(768, 12, 3072), "F32", bert_config(768, 12, 3072, 12), 10**11)
    large = CACHE / "bert-large-fp32"
    if not args.skip_large:
        build(large, bert_specs(1024, 24, 4096), "F32", bert_config(1024, 24, 4096, 16), 10**11)
    big = CACHE / "decoder-6gb-bf16"
    if not args.skip_6gb:
        cfg = {
            "model_type": "llama",
            "num_hidden_layers": 26,
            "hidden_size": 3072,
            "initializer_range": 0.02,
        }
        build(big, decoder_specs(3072, 26, 8192, 32000), "BF16", cfg, 1_600_000_000)

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.platform()}"
    )
    help_runs = bench({"--help": ([*CKPT, "--help"], False)}, max(args.reps, 5))
    report.add("-", "ckptsurgeon --help", help_runs["--help"])
    report.target(
        "--help under 0.5 s",
        help_runs["--help"].median < 0.5,
        f"{help_runs['--help'].median:.3f} s",
    )

    through: dict[str, float] = {}
    if not args.skip_base:
        res = bert_suite(report, "bert-base", base, 12, args.reps, baselines=True)
        cps = res["cp+sync"].median
        re3 = res["reinit top3+pooler"].median
        report.target(
            "bert-base reinit top3+pooler <= 2x cp+sync", re3 <= 2 * cps, f"{re3 / cps:.2f}x"
        )
        report.target(
            "bert-base reinit >= 2.5x faster than naive",
            res["naive script"].median >= 2.5 * re3,
            f"{res['naive script'].median / re3:.2f}x",
        )
        report.target(
            "bert-base reinit >= 6x faster than transformers way",
            res["transformers way"].median >= 6 * re3,
            f"{res['transformers way'].median / re3:.2f}x",
        )
        for job in ("drop cls.*", "convert"):
            report.target(
                f"bert-base {job} <= 1.5x cp+sync",
                res[job].median <= 1.5 * cps,
                f"{res[job].median / cps:.2f}x",
            )
        through["bert-base"] = size_of(base) / res["convert"].median

    if not args.skip_large:
        res = bert_suite(report, "bert-large", large, 24, args.reps, baselines=True)
        through["bert-large"] = size_of(large) / res["convert"].median

    if not args.skip_6gb:
        warm(big)
        jobs: dict[str, tuple[Sequence[str] | str, bool]] = {
            "cp": (f"cp -r {big} {OUT / 'cp'}", True),
            "cp+sync": (f"cp -r {big} {OUT / 'cp'} && sync", True),
            "inspect": ([*CKPT, "inspect", str(big)], False),
            "convert": (
                [*CKPT, "convert", str(big), str(OUT / "c"), "--max-shard-size", "1.6GB"],
                False,
            ),
            "drop lm_head": (
                [
                    *CKPT,
                    "drop",
                    str(big),
                    str(OUT / "d"),
                    "-p",
                    "lm_head.*",
                    "--max-shard-size",
                    "1.6GB",
                ],
                False,
            ),
            "reinit top3": (
                [
                    *CKPT,
                    "reinit",
                    str(big),
                    str(OUT / "r"),
                    "--top-layers",
                    "3",
                    "--max-shard-size",
                    "1.6GB",
                ],
                False,
            ),
        }
        res = bench(jobs, args.reps)
        subprocess.run(
            [
                *CKPT,
                "reinit",
                str(big),
                str(CACHE / "decoder-re"),
                "--top-layers",
                "3",
                "--overwrite",
                "--max-shard-size",
                "1.6GB",
            ],
            check=True,
            capture_output=True,
        )
        res.update(
            bench(
                {
                    "diff vs reinit": ([*CKPT, "diff", str(big), str(CACHE / "decoder-re")], False),
                    "diff --names-only": (
                        [*CKPT, "diff", "--names-only", str(big), str(CACHE / "decoder-re")],
                        False,
                    ),
                },
                args.reps,
            )
        )
        cps = res["cp+sync"].median
        for job, runs in res.items():
            report.add("6GB bf16 4 shards", job, runs, ratio(runs.median, cps))
        report.target(
            "6GB inspect under 0.5 s", res["inspect"].median < 0.5, f"{res['inspect'].median:.3f} s"
        )
        for job, limit in (
            ("convert", 1.2),
            ("drop lm_head", 1.2),
            ("reinit top3", 1.4),
            ("diff vs reinit", 2.0),
        ):
            r = res[job].median / cps
            report.target(f"6GB {job} <= {limit}x cp+sync", r <= limit, f"{r:.2f}x")
        worst = max((max(r.rss), j) for j, r in res.items() if not j.startswith("cp"))
        report.target(
            "6GB peak RSS of every command < 400 MiB",
            worst[0] < 400,
            f"max {worst[0]:.0f} MiB ({worst[1]})",
        )
        through["6GB bf16"] = size_of(big) / res["convert"].median

    rng_report(report)
    print()
    print(
        "convert throughput (linear cost in bytes): "
        + ", ".join(f"{k} {v / 1e9:.2f} GB/s" for k, v in through.items())
    )
    print()
    report.print()


def rng_report(report: Report) -> None:
    """Random numbers: ours on every core vs torch normal_ on one thread, same run."""
    code = r"""
import time, numpy as np, torch, os
from ckptsurgeon.init_rules import generate, Rule
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


if __name__ == "__main__":
    main()
