"""`check`, the torch-free release gate, against reading and hashing the same files.

    python benchmarks/check.py            # builds the 6 GB decoder of run.py once
    python benchmarks/check.py --reps 5

On the ~6.3 GB 4-shard bf16 decoder of run.py, page cache warm, whole processes in alternated
pairs: ``check --write-manifest`` against ``sha256sum`` of the same files, and ``check`` (no
manifest) against ``cat`` of the files to /dev/null (reading them once). Targets: within 1.5x
of each.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import CKPT, OUT, Job, Report, build_decoder_6gb, paired, suite_main, warm  # noqa: E402


def suite(report: Report, reps: int) -> None:
    big = build_decoder_6gb()
    warm(big)
    files = " ".join(shlex.quote(str(f)) for f in sorted(big.iterdir()) if f.is_file())
    label = "6GB bf16 4 shards"
    sha: Job = (f"sha256sum {files} > /dev/null", True)
    manifest: Job = ([*CKPT, "check", str(big), "--write-manifest", str(OUT / "m.json"), "-q"],
                     False)  # fmt: skip
    res = paired({"check --write-manifest": manifest}, sha, reps)
    report.add(label, "sha256sum of the files", res["reference"])
    ratio = res["check --write-manifest"].ratio
    report.add(label, "check --write-manifest", res["check --write-manifest"], f"{ratio:.2f}x")
    report.target("check --write-manifest within 1.5x of sha256sum", ratio <= 1.5,
                  f"{ratio:.2f}x")  # fmt: skip
    cat: Job = (f"cat {files} > /dev/null", True)
    plain: Job = ([*CKPT, "check", str(big), "-q"], False)
    res = paired({"check": plain}, cat, reps)
    report.add(label, "cat of the files", res["reference"])
    ratio = res["check"].ratio
    report.add(label, "check", res["check"], f"{ratio:.2f}x")
    report.target("check within 1.5x of reading the files once (cat)", ratio <= 1.5,
                  f"{ratio:.2f}x")  # fmt: skip
    rss = max(max(res["check"].rss), 0)
    report.target("check peak RSS under 400 MiB", rss < 400, f"{rss:.0f} MiB")


if __name__ == "__main__":
    suite_main(suite, __doc__)
