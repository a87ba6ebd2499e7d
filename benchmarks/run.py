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
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import (  # noqa: E402
    CACHE,
    CKPT,
    OUT,
    Job,
    Report,
    bench,
    bert_config,
    bert_specs,
    build,
    build_decoder_6gb,
    ck,
    cp_sync,
    paired,
    prefixed,
    warm,
)
from single import (  # noqa: E402
    bert_suite,
    layers_suite,
    recipe_suite,
    recipe_targets,
    rng_report,
)


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
        recipe_targets(report, "bert-large", res)

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
        recipe_targets(report, "6GB", rec)
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


if __name__ == "__main__":
    main()
