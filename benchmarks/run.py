"""Benchmarks: ckptsurgeon against `cp`+sync, the naive script, the transformers way, and its own
steps run one by one.

    python benchmarks/run.py                 # everything (needs ~30 GB of free disk, ~25 min)
    python benchmarks/run.py --skip-6gb      # bert-base and bert-large only
    python benchmarks/run.py --reps 5      # pairs per figure (bert-base: at least 9)
    python benchmarks/run.py --skip-training  # without the DCP/ZeRO-3 checkpoints (training.py)
    python benchmarks/run.py --skip-many      # without average and merge-lora (many.py)
    python benchmarks/run.py --skip-clones    # without the XFS clone figures (clones.py; root)

It builds synthetic checkpoints with real names and shapes (bert-base fp32, bert-large fp32, the
same with DDP's `module.` prefix, and a ~6 GB 4-shard bf16 decoder-style checkpoint, written by
ckptsurgeon's own streaming writer), caches them in benchmarks/.cache, then times whole
processes, page cache warm.

How it times (the disk here drifts between runs by up to 2x, so absolute seconds from
different minutes do not compare):
- Every ratio is measured in *alternated pairs*: the contender and its reference run back to
  back, in alternating order (A B, B A, A B...), and the figure is the median of the per-pair
  ratios. Both sides of a pair see the same disk weather.
- Inside each timing: the whole process, from exec to exit, including interpreter start-up and
  imports. ckptsurgeon fsyncs every file it writes before it renames the output into place;
  the reference `cp -r SRC DEST && sync DEST/* DEST` copies and then fsyncs exactly the copied
  files and folder (a bare `sync` would wait for every dirty page on the machine, and varied 5x
  between runs here). Removing the previous output happens *outside* the timing, before each
  run, followed by a `sync` so that no run pays for the previous one's deletions.
- ckptsurgeon is byte-compiled first (`compileall`), as `pip install` does when it installs
  a package: in an environment that sets PYTHONDONTWRITEBYTECODE (this one does) an editable
  checkout would otherwise recompile its modules in every timed process (about 30 ms).
- Peak RSS is GNU time's %M of the timed process.
It prints the medians, the spread, peak RSS, the ratios, and PASS/MISS for every target.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
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
    path: Path,
    specs: list[tuple[str, tuple[int, ...]]],
    dtype: str,
    config: dict,
    shard: int,
    seed: int = 1234,
) -> None:
    """Write a synthetic checkpoint with ckptsurgeon's streaming writer (memory stays flat)."""
    from ckptsurgeon.dtypes import nbytes_of
    from ckptsurgeon.formats.checkpoint import Checkpoint, write_all
    from ckptsurgeon.rules.bert import Rule, generate
    from ckptsurgeon.run.layout import OutTensor
    from ckptsurgeon.run.writer import write_checkpoint

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
        for chunk in generate(t.name, t.dtype, t.shape, rule, seed=seed):
            write_all(fd, chunk)

    empty = Checkpoint(path=CACHE, format="safetensors", files=[], tensors=[])
    write_checkpoint(empty, path, tensors, emit, {}, max_shard_size=shard)
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def build_decoder_6gb() -> Path:
    """The ~6.3 GB bf16 Llama-shaped decoder (26 layers, 4 shards of at most 1.6 GB)."""
    big = CACHE / "decoder-6gb-bf16"
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "num_hidden_layers": 26,
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_attention_heads": 24,
        "num_key_value_heads": 24,
        "vocab_size": 32000,
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
    }
    build(big, decoder_specs(3072, 26, 8192, 32000), "BF16", cfg, 1_600_000_000)
    (big / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")  # a full config
    return big


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

Job = tuple[Sequence[str] | str, bool]  # (argv or shell line, is a shell line)


@dataclass
class Runs:
    times: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)  # MiB
    ratios: list[float] = field(default_factory=list)  # per pair: this / its reference

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def ratio(self) -> float:
        """The median of the per-pair ratios to the reference."""
        return statistics.median(self.ratios)

    def spread(self) -> str:
        return f"{min(self.times):.2f}-{max(self.times):.2f}"


TIME = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)


def run_once(job: Job) -> tuple[float, float]:
    """Wall time and peak RSS (MiB) of one whole process; its output removed first, untimed.

    Peak RSS comes from GNU time's %M (the child's maximum resident set); rusage from wait4
    would report at least this script's own size, which a forked child starts from.
    """
    cmd, shell = job
    clean_out()
    os.sync()  # untimed: the previous output's deletion is not this run's cost
    argv = ["/bin/sh", "-c", str(cmd)] if shell else list(cmd)
    rss_file = CACHE / "rss.txt"
    if TIME:
        argv = [TIME, "-f", "%M", "-o", str(rss_file), *argv]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1) or (shell and code != 0):  # diff exits 1 on differences; cp never may
        raise RuntimeError(f"{cmd} exited {code}")
    if TIME:
        return elapsed, int(rss_file.read_text().split()[-1]) / 1024
    return elapsed, usage.ru_maxrss / 1024


def clean_out() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)


def bench(jobs: dict[str, Job], reps: int) -> dict[str, Runs]:
    """Absolute times only (for figures with no reference, like --help)."""
    results = {name: Runs() for name in jobs}
    for _ in range(reps):
        for name, job in jobs.items():
            t, rss = run_once(job)
            results[name].times.append(t)
            results[name].rss.append(rss)
    clean_out()
    return results


def paired(contenders: dict[str, Job], reference: Job, reps: int) -> dict[str, Runs]:
    """Each contender timed in ``reps`` alternated pairs with ``reference``; ``Runs.ratio`` is
    the median of contender / reference over the pairs. The reference's own runs are kept
    under the key ``"reference"``."""
    results = {name: Runs() for name in contenders}
    ref = Runs()
    for rep in range(reps):
        for name, job in contenders.items():
            first_ref = (rep + len(results[name].times)) % 2 == 0
            order = (
                [(reference, True), (job, False)]
                if first_ref
                else [(job, False), (reference, True)]
            )
            timed: dict[bool, float] = {}
            for j, is_ref in order:
                t, rss = run_once(j)
                timed[is_ref] = t
                if is_ref:
                    ref.times.append(t)
                    ref.rss.append(rss)
                else:
                    results[name].times.append(t)
                    results[name].rss.append(rss)
            results[name].ratios.append(timed[False] / timed[True])
    clean_out()
    results["reference"] = ref
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
            "vs cp+sync (paired)",
            "vs naive (paired)",
            "vs transformers (paired)",
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


def suite_main(suite: Callable[[Report, int], None], doc: str | None) -> None:
    """The command line of one suite module (``python benchmarks/many.py --reps 5``)."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    CACHE.mkdir(exist_ok=True)
    report = Report()
    suite(report, args.reps)
    print()
    report.print()


def cp_sync(src: Path) -> Job:
    """The reference: copy, then fsync exactly the copied files (GNU `sync FILE...`), as
    ckptsurgeon fsyncs exactly what it writes. A bare `sync` would also wait for every other
    dirty page on the machine (the previous run's deleted output, other processes), which made
    the reference vary 5x between runs here."""
    dest = shlex.quote(str(OUT / "cp"))
    return (f"cp -r {shlex.quote(str(src))} {dest} && sync {dest}/* {dest}", True)


def ck(*args: object) -> Job:
    return ([*CKPT, *map(str, args)], False)


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


def prefixed(src: Path, dest: Path) -> Path:
    """``src`` with every name under DDP's ``module.`` (what a wrapped training run saves)."""
    if not dest.exists():
        print(f"building {dest.name} ...", file=sys.stderr, flush=True)
        subprocess.run(
            [*CKPT, "rename", src, dest, "--add-prefix", "module.", "--max-shard-size", "1.6GB"],
            check=True,
            capture_output=True,
        )
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--skip-6gb", action="store_true")
    parser.add_argument("--skip-large", action="store_true", help="skip bert-large")
    parser.add_argument("--skip-base", action="store_true", help="skip bert-base and its targets")
    parser.add_argument(
        "--skip-clones",
        action="store_true",
        help="skip drop and reinit on a loop-mounted XFS (benchmarks/clones.py; needs root)",
    )
    parser.add_argument(
        "--skip-many",
        action="store_true",
        help="skip average and merge-lora (benchmarks/many.py)",
    )
    parser.add_argument(
        "--skip-training",
        action="store_true",
        help="skip the DCP and ZeRO-3 training checkpoints (benchmarks/training.py)",
    )
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent))
    # what `pip install` does: without it, PYTHONDONTWRITEBYTECODE=1 (set on this machine) makes
    # every timed process recompile the package's modules from source
    import compileall

    compileall.compile_dir(str(HERE.parent / "ckptsurgeon"), quiet=1)
    CACHE.mkdir(exist_ok=True)
    report = Report()
    try:
        suites(args, report)
    finally:
        print()
        report.print()


def suites(args: argparse.Namespace, report: Report) -> None:
    base = CACHE / "bert-base-fp32"
    build(base, bert_specs(768, 12, 3072), "F32", bert_config(768, 12, 3072, 12), 10**11)
    large = CACHE / "bert-large-fp32"
    if not args.skip_large:
        build(large, bert_specs(1024, 24, 4096), "F32", bert_config(1024, 24, 4096, 16), 10**11)
    big = CACHE / "decoder-6gb-bf16"
    if not args.skip_6gb:
        build_decoder_6gb()

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.platform()}"
    )
    help_runs = bench({"--help": ck("--help")}, max(args.reps, 5))
    report.add("-", "ckptsurgeon --help", help_runs["--help"])
    report.target(
        "--help under 0.5 s",
        help_runs["--help"].median < 0.5,
        f"{help_runs['--help'].median:.3f} s",
    )

    if not args.skip_base:
        # bert-base jobs take a third of a second, where the disk's drift between two runs is
        # as large as the effect measured: more pairs (cheap here) for a stable median
        small_reps = max(args.reps, 9)
        res = bert_suite(report, "bert-base", base, 12, small_reps, baselines=True)
        re3 = res["reinit top3+pooler"].ratio
        report.target("bert-base reinit top3+pooler <= 1.5x cp+sync", re3 <= 1.5, f"{re3:.2f}x")
        naive, tfw = res["naive script"].ratio, res["transformers way"].ratio
        report.target("bert-base reinit >= 2.5x faster than naive", naive >= 2.5, f"{naive:.2f}x")
        report.target(
            "bert-base reinit >= 6x faster than transformers way", tfw >= 6, f"{tfw:.2f}x"
        )
        model = res["transformers way vs --rules model"].ratio
        report.target(
            "bert-base reinit --rules model >= 3x faster than transformers way",
            model >= 3,
            f"{model:.2f}x",
        )
        for job in ("drop cls.*", "convert"):
            r = res[job].ratio
            report.target(f"bert-base {job} <= 1.5x cp+sync", r <= 1.5, f"{r:.2f}x")

        student = layers_suite(report, "bert-base", base, "0,2,4,7,9,11", small_reps)
        report.target(
            "bert-base layers --keep 0,2,4,7,9,11 vs cp+sync of the bytes it writes (info)",
            True,
            f"{student:.2f}x: 0.08 s of start-up against a 0.15 s copy",
        )

    if not args.skip_large:
        res = bert_suite(report, "bert-large", large, 24, args.reps, baselines=False)
        r = res["cast bf16"].ratio
        report.target("bert-large cast fp32->bf16 <= 1.3x cp+sync", r <= 1.3, f"{r:.2f}x")
        ddp = prefixed(large, CACHE / "bert-large-fp32-ddp")
        res = recipe_suite(
            report, "bert-large (module.)", ddp, "bert.encoder.layer", "cls.*", "bf16", args.reps
        )
        _recipe_targets(report, "bert-large", res)

    if not args.skip_6gb:
        warm(big)
        shard = ["--max-shard-size", "1.6GB"]
        jobs: dict[str, Job] = {
            "inspect": ck("inspect", big),
            "convert": ck("convert", big, OUT / "c", *shard),
            "drop lm_head": ck("drop", big, OUT / "d", "-p", "lm_head.*", *shard),
            "reinit top3": ck(
                "reinit", big, OUT / "r", "--top-layers", 3, "--rules", "bert", *shard
            ),
            "cast fp16": ck("cast", big, OUT / "f", "--dtype", "fp16", *shard),
            "rename": ck("rename", big, OUT / "n", "--sub", "^model\\.", "base.", *shard),
            "layers --keep 0-12": ck("layers", big, OUT / "l", "--keep", "0-12", *shard),
            "resize-vocab +100 mean": ck("resize-vocab", big, OUT / "v", "--size", 32100, *shard),
        }
        res = paired(jobs, cp_sync(big), args.reps)
        res["cp+sync"] = res.pop("reference")
        subprocess.run(
            [
                *CKPT,
                "reinit",
                big,
                CACHE / "decoder-re",
                "--top-layers",
                "3",
                "--rules",
                "bert",
                "--overwrite",
                *shard,
            ],
            check=True,
            capture_output=True,
        )
        diffs = {
            "diff vs reinit": ck("diff", big, CACHE / "decoder-re"),
            "diff --names-only": ck("diff", "--names-only", big, CACHE / "decoder-re"),
        }
        res.update(
            {k: v for k, v in paired(diffs, cp_sync(big), args.reps).items() if k != "reference"}
        )
        for job, runs in res.items():
            report.add("6GB bf16 4 shards", job, runs, f"{runs.ratio:.2f}x" if runs.ratios else "")
        report.target(
            "6GB inspect under 0.5 s", res["inspect"].median < 0.5, f"{res['inspect'].median:.3f} s"
        )
        for job, limit in (
            ("convert", 1.2),
            ("drop lm_head", 1.2),
            ("reinit top3", 1.4),
            ("diff vs reinit", 2.0),
        ):
            r = res[job].ratio
            report.target(f"6GB {job} <= {limit}x cp+sync", r <= limit, f"{r:.2f}x")
        half = layers_suite(report, "6GB bf16 4 shards", big, "0-12", args.reps)
        report.target(
            "6GB layers --keep 0-12 <= 1.1x cp+sync of the bytes it writes",
            half <= 1.1,
            f"{half:.2f}x",
        )
        ddp = prefixed(big, CACHE / "decoder-6gb-bf16-ddp")
        rec = recipe_suite(
            report, "6GB (module.)", ddp, "model.layers", "lm_head.*", "fp16", args.reps
        )
        _recipe_targets(report, "6GB", rec)
        every = {**res, **rec}
        worst = max((max(r.rss), j) for j, r in every.items() if not j.startswith(("cp", "same 4")))
        report.target(
            "6GB peak RSS of every command and the 4-step recipe < 400 MiB",
            worst[0] < 400,
            f"max {worst[0]:.0f} MiB ({worst[1]})",
        )

    if not args.skip_6gb:
        # --rules model on a TinyLlama-shaped 5 GB checkpoint (model_rules.py)
        from model_rules import suite as model_rules_suite

        model_rules_suite(report, args.reps)
        # check, the torch-free gate, against sha256sum and cat of the same files (check.py)
        from check import suite as check_suite

        check_suite(report, args.reps)

    if not args.skip_clones and not args.skip_6gb:
        # copy-on-write: drop and reinit of the 6 GB decoder on XFS (clones.py)
        from clones import suite as clones_suite

        clones_suite(report, args.reps)

    if not args.skip_many:
        # several checkpoints in: average and merge-lora (many.py)
        from many import suite as many_suite

        many_suite(report, args.reps)

    if not args.skip_training:
        # training checkpoints (DCP from FSDP2, DeepSpeed ZeRO-3) to a release: training.py
        from training import suite as training_suite

        training_suite(report, args.reps)

    rng_report(report)


def _recipe_targets(report: Report, name: str, res: dict[str, Runs]) -> None:
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


if __name__ == "__main__":
    main()
