"""The benchmarks' harness: synthetic checkpoints (written by ckptsurgeon's own streaming
writer, cached in benchmarks/.cache), whole-process timing in alternated pairs, peak RSS, and the
report. The suites (single.py, clones.py, many.py, training.py, model_rules.py, check.py) and the
runner (run.py) import from here; see run.py for how it times."""

from __future__ import annotations

import argparse
import json
import os
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


LLAMA_6GB = {  # the config.json of the 6 GB decoder
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


def build_decoder_6gb() -> Path:
    """The ~6.3 GB bf16 Llama-shaped decoder (26 layers, 4 shards of at most 1.6 GB)."""
    big = CACHE / "decoder-6gb-bf16"
    build(big, decoder_specs(3072, 26, 8192, 32000), "BF16", LLAMA_6GB, 1_600_000_000)
    (big / "config.json").write_text(json.dumps(LLAMA_6GB, indent=2) + "\n")  # a full config
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
    cpu: list[tuple[float, float, int]] = field(default_factory=list)  # user s, system s, faults

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def ratio(self) -> float:
        """The median of the per-pair ratios to the reference."""
        return statistics.median(self.ratios)

    def spread(self) -> str:
        return f"{min(self.times):.2f}-{max(self.times):.2f}"

    def cpu_use(self) -> str:
        """Median CPU seconds of a run, user and system, and its page faults (the process and
        what it waited for)."""
        user = statistics.median(u for u, _, _ in self.cpu)
        system = statistics.median(s for _, s, _ in self.cpu)
        faults = statistics.median(f for _, _, f in self.cpu)
        return (
            f"{user:.1f} s user + {system:.1f} s system in {self.median:.1f} s, "
            f"{faults:,.0f} page faults"
        )


TIME = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)


def run_once(job: Job) -> tuple[float, float, tuple[float, float, int]]:
    """Wall time, peak RSS (MiB) and CPU use (user s, system s, minor page faults, with the
    processes it waited for) of one whole process; its output removed first, untimed.

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
    cpu = (usage.ru_utime, usage.ru_stime, usage.ru_minflt)
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1) or (shell and code != 0):  # diff exits 1 on differences; cp never may
        raise RuntimeError(f"{cmd} exited {code}")
    if TIME:
        return elapsed, int(rss_file.read_text().split()[-1]) / 1024, cpu
    return elapsed, usage.ru_maxrss / 1024, cpu


def clean_out() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)


def bench(jobs: dict[str, Job], reps: int) -> dict[str, Runs]:
    """Absolute times only (for figures with no reference, like --help)."""
    results = {name: Runs() for name in jobs}
    for _ in range(reps):
        for name, job in jobs.items():
            t, rss, cpu = run_once(job)
            results[name].times.append(t)
            results[name].rss.append(rss)
            results[name].cpu.append(cpu)
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
                t, rss, cpu = run_once(j)
                timed[is_ref] = t
                runs = ref if is_ref else results[name]
                runs.times.append(t)
                runs.rss.append(rss)
                runs.cpu.append(cpu)
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
        self.notes: list[str] = []

    def add(self, ckpt: str, job: str, runs: Runs, *ratios: str) -> None:
        self.rows.append(
            [ckpt, job, f"{runs.median:.2f}", runs.spread(), f"{max(runs.rss):.0f}", *ratios]
        )

    def target(self, what: str, ok: bool, detail: str) -> None:
        self.targets.append((what, ok, detail))

    def note(self, text: str) -> None:
        """A line printed after the targets (where the time went)."""
        self.notes.append(text)

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
        for text in self.notes:
            print(f"NOTE  {text}")


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
