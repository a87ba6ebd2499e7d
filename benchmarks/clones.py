"""Clones on a copy-on-write file system: what `drop` and `reinit` cost on XFS with reflink.

    python benchmarks/clones.py            # root: loop-mounts a 20 GB sparse XFS image
    python benchmarks/clones.py --reps 5

The ~6.3 GB 4-shard bf16 decoder of run.py (26 layers) is copied once into a loop-mounted XFS
(``mkfs.xfs -m reflink=1``); then, page cache warm, whole processes on that file system:

- ``drop -p lm_head.weight`` (a head), with the default shards, ``--max-shard-size source``
  and ``--max-shard-size 5GB`` (for information: it packs the 4 source files into 2), against
  ``cp --reflink=never`` + fsync of its output, in alternated pairs (GNU cp clones by default
  on XFS: the reference is a real copy). Targets: at most 0.1x of the copy, and newly
  allocated bytes (statvfs, synced) at most 2% of the output.
- ``reinit --top-layers 3 --rules bert``: allocated at most 15% of the output.

Needs root, xfsprogs and a loop device; about 20 GB of free disk for the sparse image.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402
from harness import CACHE, CKPT, Job, Report, paired, suite_main, warm  # noqa: E402

IMAGE = CACHE / "xfs.img"
MOUNT = CACHE / "xfs-mnt"


@contextlib.contextmanager
def mounted() -> Iterator[Path]:
    """The XFS image, made once (sparse), mounted for the suite and unmounted after."""
    if os.geteuid() != 0 or shutil.which("mkfs.xfs") is None:
        raise SystemExit("clones.py needs root and mkfs.xfs (apt-get install xfsprogs)")
    if not IMAGE.exists():
        with open(IMAGE, "wb") as fh:
            fh.truncate(20 << 30)
        subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(IMAGE)], check=True)
    MOUNT.mkdir(exist_ok=True)
    if not os.path.ismount(MOUNT):
        subprocess.run(["mount", "-o", "loop", str(IMAGE), str(MOUNT)], check=True)
    try:
        yield MOUNT
    finally:
        subprocess.run(["umount", str(MOUNT)], check=False)


def free_bytes(path: Path) -> int:
    """Free bytes once they stop changing: XFS frees a deleted file's blocks in the background
    (deferred inode inactivation), which made a run after a deletion look like it allocated
    nothing."""
    import time

    last = -1
    for _ in range(50):
        os.sync()
        st = os.statvfs(path)
        now = st.f_bfree * st.f_frsize
        if now == last:
            return now
        last = now
        time.sleep(0.1)
    return last


def allocated(job: Job, where: Path) -> int:
    """The bytes the file system allocated for one run of ``job`` (its output kept, synced)."""
    harness.clean_out()
    before = free_bytes(where)
    cmd, shell = job
    subprocess.run(cmd if not shell else ["/bin/sh", "-c", str(cmd)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    after = free_bytes(where)
    harness.clean_out()
    return before - after


def suite(report: Report, reps: int) -> None:
    big = harness.build_decoder_6gb()
    with mounted() as mnt:
        src = mnt / "decoder-6gb-bf16"
        if not (src / "model.safetensors.index.json").exists():
            shutil.rmtree(src, ignore_errors=True)
            subprocess.run(["cp", "-r", "--reflink=never", str(big), str(src)], check=True)
        warm(src)
        saved_out = harness.OUT
        harness.OUT = mnt / "out"  # every output on the XFS
        try:
            out = harness.OUT
            ref: Job = (
                f"cp -r --reflink=never {shlex.quote(str(src))} {out}/cp && "
                f"sync {out}/cp/* {out}/cp",
                True,
            )

            def drop(*shards: str) -> Job:
                return ([*CKPT, "drop", str(src), str(out / "drop"), "-p", "lm_head.weight",
                         *shards, "-q"], False)  # fmt: skip

            jobs = {
                "default": drop(),
                "source": drop("--max-shard-size", "source"),
                "5GB": drop("--max-shard-size", "5GB"),
            }
            res = paired(jobs, ref, reps)
            size = sum(f.stat().st_size for f in big.iterdir() if f.is_file())
            label = "6GB bf16 on XFS"
            report.add(label, "cp --reflink=never + sync", res["reference"])
            for shards, job in jobs.items():
                ratio = res[shards].ratio
                what = "default shards" if shards == "default" else f"--max-shard-size {shards}"
                report.add(label, f"drop -p lm_head.weight ({what})", res[shards], f"{ratio:.2f}x")
                got = allocated(job, mnt) / size
                if shards == "5GB":  # packs 4 source files into 2: only one of each aligns
                    report.target(f"XFS: drop ({what}; info)", True,
                                  f"{ratio:.3f}x, {100 * got:.2f}% allocated")  # fmt: skip
                    continue
                report.target(f"XFS: drop of a head at most 0.1x of cp+fsync ({what})",
                              ratio <= 0.1, f"{ratio:.3f}x")  # fmt: skip
                report.target(f"XFS: drop ({what}) allocates at most 2% of the output",
                              got <= 0.02, f"{100 * got:.2f}%")  # fmt: skip
            for shards in ("auto", "source"):
                reinit: Job = ([*CKPT, "reinit", str(src), str(out / "reinit"), "--top-layers",
                                "3", "--rules", "bert", "--max-shard-size", shards, "-q"],
                               False)  # fmt: skip
                got = allocated(reinit, mnt) / size
                what = "default" if shards == "auto" else shards
                report.target(f"XFS: reinit --top-layers 3 of 26 ({what} shards) allocates at "
                              "most 15%", got <= 0.15, f"{100 * got:.2f}%")  # fmt: skip
        finally:
            harness.clean_out()
            harness.OUT = saved_out


if __name__ == "__main__":
    suite_main(suite, __doc__)
