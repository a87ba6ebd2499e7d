"""Training checkpoints written by the real libraries, built once per test session.

``build(root)`` trains a tiny BERT (tied decoder, odd sizes so that every partition is uneven)
one step in each framework and saves what the trainer saves, then asks each library's own
converter for the answer ckptsurgeon must give:

- ``dcp/``: ``torch.distributed.checkpoint.save({"model": sd, "optim": osd})``, one process;
- ``titan/``: torchtitan's layout (model keys at the top beside ``optimizer``, ``lr_scheduler``,
  ``dataloader``, ``train_state``), one process;
- ``accelerate/``: accelerate's FSDP ``save_state`` layout (``pytorch_model_fsdp_0/`` = the DCP of
  ``{"model": sd}``, ``optimizer_0/``): accelerate cannot run FSDP on a CPU, so the folders are
  written with DCP as accelerate writes them;
- ``fsdp2/``: FSDP2 ``fully_shard`` on 2 processes (gloo): every parameter row-sharded, uneven;
- ``colshard/``: DTensors sharded by columns (``Shard(1)``) on 2 processes: chunks that are not
  contiguous in the tensor;
- ``zero{2,3}-{fp32,bf16}/``: DeepSpeed ZeRO on 2 CPU ranks (``DS_ACCELERATOR=cpu``);
- ``lightning.ckpt``: a Lightning ``Trainer`` on the CPU.

Each ``NAME`` gets ``NAME.expected.safetensors`` (the converter's model tensors) and
``NAME.logits.pt`` (the trained model's forward pass on ``INPUT_IDS``). ``ref/`` holds the
model's config.json (what ``--config-from`` reads).

Run as ``python tests/training_checkpoints.py ROOT`` to build them by hand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

INPUT_IDS = [[2, 17, 45, 99, 100, 3, 0, 64], [5, 6, 7, 8, 9, 10, 11, 12]]
VERSION = "2"  # bump when what build() writes changes


def make_model(seed: int = 0) -> Any:
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    cfg = tf.BertConfig(
        vocab_size=101,
        hidden_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=40,
    )
    model = tf.BertForMaskedLM(cfg)
    model.train()
    return model


def train_step(model: Any, optim: Any) -> None:
    import torch

    ids = torch.tensor(INPUT_IDS)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optim.step()
    optim.zero_grad()


def logits(model: Any) -> Any:
    import torch

    model.eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor(INPUT_IDS)).logits


def _save_expected(root: Path, name: str, state: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().clone().contiguous() for k, v in state.items()}
    save_file(tensors, str(root / f"{name}.expected.safetensors"))


def _model_logits(root: Path, name: str, state: dict[str, Any]) -> None:
    """The forward pass of the model with ``state`` loaded (the trained model)."""
    import torch

    model = make_model()
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    torch.save(logits(model), root / f"{name}.logits.pt")


# --------------------------------------------------------------------------------------------
# one process


def build_single(root: Path) -> None:
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    model = make_model()
    model.config.architectures = ["BertForMaskedLM"]
    model.config.save_pretrained(root / "ref")
    optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(optim, 1)
    train_step(model, optim)
    sched.step()
    sd = model.state_dict()
    dcp.save({"model": sd, "optim": optim.state_dict()}, checkpoint_id=str(root / "dcp"))
    titan = {
        **sd,
        "optimizer": optim.state_dict(),
        "lr_scheduler": sched.state_dict(),
        "dataloader": {"step": 1, "sampler": b"opaque"},
        "train_state": {"step": 1, "tokens_seen": torch.tensor(16)},
    }
    dcp.save(titan, checkpoint_id=str(root / "titan"))
    dcp.save({"model": sd}, checkpoint_id=str(root / "accelerate" / "pytorch_model_fsdp_0"))
    dcp.save(
        {"optimizer": optim.state_dict()}, checkpoint_id=str(root / "accelerate" / "optimizer_0")
    )
    torch.save(sched.state_dict(), root / "accelerate" / "scheduler.bin")
    for name in ("dcp", "titan"):
        dcp_to_torch_save(str(root / name), str(root / f"{name}.full.pt"))
    full = torch.load(root / "dcp.full.pt", weights_only=True)
    _save_expected(root, "dcp", full["model"])
    titan_full = torch.load(root / "titan.full.pt", weights_only=True)
    _save_expected(root, "titan", {k: titan_full[k] for k in sd})
    _save_expected(root, "accelerate", full["model"])
    for name in ("dcp", "titan", "accelerate"):
        _model_logits(root, name, full["model"])
    for name in ("dcp", "titan"):
        (root / f"{name}.full.pt").unlink()

    # Lightning
    import lightning as L

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = make_model()

        def training_step(self, batch: Any, _: int) -> Any:
            return self.model(input_ids=batch, labels=batch).loss

        def configure_optimizers(self) -> Any:
            return torch.optim.AdamW(self.parameters(), lr=1e-2)

    module = Module()
    data = torch.utils.data.DataLoader(torch.tensor(INPUT_IDS), batch_size=2)
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, data)
    trainer.save_checkpoint(root / "lightning.ckpt")
    state = torch.load(root / "lightning.ckpt", weights_only=True)["state_dict"]
    _save_expected(root, "lightning", state)
    _model_logits(root, "lightning", {k.removeprefix("model."): v for k, v in state.items()})


# --------------------------------------------------------------------------------------------
# two processes (torch.distributed.run)


def _fsdp2(root: Path) -> None:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    dist.init_process_group("gloo")
    model = make_model()
    for layer in model.bert.encoder.layer:
        fully_shard(layer)
    fully_shard(model)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
    train_step(model, optim)
    msd, osd = get_state_dict(model, optim)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(root / "fsdp2"))
    # column-sharded DTensors: chunks that are not contiguous in the tensor
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    full = make_model().state_dict()
    cols = {
        k: distribute_tensor(v, mesh, [Shard(1)] if v.dim() == 2 else [Shard(0)])
        for k, v in full.items()
        if v.is_floating_point()
    }
    dcp.save({"model": cols}, checkpoint_id=str(root / "colshard"))
    dist.barrier()
    dist.destroy_process_group()


def _zero(root: Path) -> None:
    import deepspeed
    import torch
    import torch.distributed as dist

    deepspeed.init_distributed(dist_backend="gloo")
    for stage in (2, 3):
        for dtype in ("fp32", "bf16"):
            model = make_model()
            config = {
                "train_batch_size": 2 * dist.get_world_size(),
                "zero_optimization": {"stage": stage},
                "bf16": {"enabled": dtype == "bf16"},
            }
            optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
            engine, *_ = deepspeed.initialize(model=model, optimizer=optim, config=config)
            ids = torch.tensor(INPUT_IDS)
            loss = engine(input_ids=ids, labels=ids).loss
            engine.backward(loss)
            engine.step()
            engine.save_checkpoint(str(root / f"zero{stage}-{dtype}"))
            dist.barrier()
            del engine, optim, model
    # as _fsdp2 does: a rank that exits with its process group alive can abort in teardown
    # ("terminate called without an active exception", seen once in CI's 4.x environment)
    dist.destroy_process_group()


def build_distributed(root: Path, what: str) -> None:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        __file__,
        "--worker",
        what,
        str(root),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")


def expected_distributed(root: Path) -> None:
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    for name in ("fsdp2", "colshard"):
        dcp_to_torch_save(str(root / name), str(root / f"{name}.full.pt"))
        full = torch.load(root / f"{name}.full.pt", weights_only=True)
        _save_expected(root, name, full["model"])
        _model_logits(root, name, full["model"])
        (root / f"{name}.full.pt").unlink()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    for stage in (2, 3):
        for dtype in ("fp32", "bf16"):
            name = f"zero{stage}-{dtype}"
            state = get_fp32_state_dict_from_zero_checkpoint(str(root / name))
            _save_expected(root, name, state)
            _model_logits(root, name, state)


def build(root: Path) -> Path:
    """Build every checkpoint into ``root`` (skipped when a finished build is there)."""
    done = root / "BUILT"
    if done.exists() and done.read_text() == VERSION:
        return root
    root.mkdir(parents=True, exist_ok=True)
    build_single(root)
    build_distributed(root, "fsdp2")
    build_distributed(root, "zero")
    expected_distributed(root)
    (root / "names.json").write_text(json.dumps(sorted(p.name for p in root.iterdir())))
    done.write_text(VERSION)
    return root


if __name__ == "__main__":
    if sys.argv[1] == "--worker":
        {"fsdp2": _fsdp2, "zero": _zero}[sys.argv[2]](Path(sys.argv[3]))
    else:
        build(Path(sys.argv[1]))
