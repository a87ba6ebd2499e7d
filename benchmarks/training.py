"""Training checkpoints to a release: ckptsurgeon against the frameworks' own converters.

    python benchmarks/training.py    # builds ~9 GB of checkpoints once (cached), then times
    python benchmarks/training.py --reps 5

Builds, with the real libraries, a ~1.6 GB fp32 model (24 Linear layers of 4096 x 4096 and an
embedding) trained one AdamW step on 2 CPU ranks: a DCP checkpoint written by FSDP2
(``fully_shard``, ``get_state_dict``: model and optimizer, ~4.8 GB) and a DeepSpeed ZeRO-3
checkpoint (~4.8 GB of optimizer partitions). Then, page cache warm, whole processes:

- ``ckptsurgeon convert SRC DEST`` against ``cp`` + fsync of the model bytes it writes, in
  alternated pairs (the median of the per-pair ratios; targets: within 1.3x, peak RSS under
  400 MiB);
- beside them, for time and peak RSS: ``dcp_to_torch_save`` + ``safetensors.save_file`` of the
  model part, and DeepSpeed's ``zero_to_fp32.py --safe_serialization``, the converters users run
  today.

Needs deepspeed and lightning (the test extra) and about 20 GB of free disk.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import CACHE, CKPT, OUT, PY, Job, Report, bench, paired, suite_main, warm  # noqa: E402

ROOT = CACHE / "training"
LAYERS, WIDTH, VOCAB = 24, 4096, 32000
VERSION = "1"


def make_model() -> object:
    import torch

    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(VOCAB, WIDTH)
            self.layers = torch.nn.ModuleList(
                torch.nn.Linear(WIDTH, WIDTH, bias=True) for _ in range(LAYERS)
            )

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            x = self.embed(ids)
            for layer in self.layers:
                x = layer(x)
            return x

    return Net()


def _worker(what: str, dest: str) -> None:
    import torch
    import torch.distributed as dist

    ids = torch.tensor([[1, 2, 3, 4]])
    if what == "fsdp2":
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict
        from torch.distributed.fsdp import fully_shard

        dist.init_process_group("gloo")
        model = make_model()
        for layer in model.layers:  # type: ignore[attr-defined]
            fully_shard(layer)
        fully_shard(model)  # type: ignore[arg-type]
        optim = torch.optim.AdamW(model.parameters(), lr=1e-4)  # type: ignore[attr-defined]
        model(ids).sum().backward()  # type: ignore[operator]
        optim.step()
        msd, osd = get_state_dict(model, optim)  # type: ignore[arg-type]
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=dest)
    else:
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
        model = make_model()
        optim = torch.optim.AdamW(model.parameters(), lr=1e-4)  # type: ignore[attr-defined]
        config = {"train_batch_size": 2, "zero_optimization": {"stage": 3}}
        engine, *_ = deepspeed.initialize(model=model, optimizer=optim, config=config)
        engine.backward(engine(ids).sum())
        engine.step()
        engine.save_checkpoint(dest)
    dist.barrier()
    dist.destroy_process_group()


def build() -> None:
    done = ROOT / "BUILT"
    if done.exists() and done.read_text() == VERSION:
        return
    ROOT.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    for what in ("fsdp2", "zero3"):
        dest = ROOT / what
        if dest.exists():
            subprocess.run(["rm", "-rf", str(dest)], check=True)
        cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        subprocess.run([*cmd, __file__, "--worker", what, str(dest)], env=env, check=True)
    done.write_text(VERSION)


DCP_CONVERTER = """
import sys, torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from safetensors.torch import save_file
dcp_to_torch_save(sys.argv[1], sys.argv[2] + ".pt")
sd = torch.load(sys.argv[2] + ".pt", weights_only=True)["model"]
save_file({k: v.contiguous() for k, v in sd.items()}, sys.argv[2])
"""


def suite(report: Report, reps: int) -> None:
    """Build (once) and time; rows and targets go to ``report`` (run.py calls this too)."""
    build()
    env_prefix = "DS_ACCELERATOR=cpu "
    for what in ("fsdp2", "zero3"):
        src = ROOT / what
        warm(src)
        out = OUT / "ck"
        model = CACHE / f"{what}-model.safetensors"  # the model bytes, for the reference copy
        if not model.exists():
            subprocess.run([*CKPT, "convert", str(src), str(model), "-q"], check=True)
        warm(model)
        ref: Job = (
            f"cp {shlex.quote(str(model))} {OUT}/cp.safetensors && sync {OUT}/cp.safetensors",
            True,
        )
        job: Job = ([*CKPT, "convert", str(src), str(out), "-q"], False)
        res = paired({"convert": job}, ref, reps)
        report.add(what, "cp+sync of the model bytes", res["reference"])
        ratio = res["convert"].ratio
        report.add(what, "ckptsurgeon convert", res["convert"], f"{ratio:.2f}x")
        report.target(f"{what}: convert within 1.3x of cp+sync", ratio <= 1.3, f"{ratio:.2f}x")
        rss = max(res["convert"].rss)
        report.target(f"{what}: convert peak RSS under 400 MiB", rss < 400, f"{rss:.0f} MiB")
        if what == "fsdp2":
            theirs: Job = ([PY, "-c", DCP_CONVERTER, str(src), str(OUT / "t.safetensors")], False)
            label = "dcp_to_torch_save + save_file"
        else:
            tag = src / "zero_to_fp32.py"
            line = f"{env_prefix}{PY} {tag} {src} {OUT}/z --safe_serialization"
            theirs, label = (line, True), "zero_to_fp32.py --safe_serialization"
        other = bench({label: theirs}, 1)[label]
        report.add(what, label, other)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], sys.argv[3])
    else:
        suite_main(suite, __doc__)
