"""A training checkpoint to try ckptsurgeon on: the tiny BERT trained one step, saved with
PyTorch Distributed Checkpoint (DCP) as FSDP and torchtitan save it: the model and the AdamW
state in one folder, no config.json.

    python examples/make_training_checkpoint.py run

Writes ``run/base/`` (the model it started from, with config.json) and ``run/step-1/`` (the DCP
folder: ``.metadata`` and ``__0_0.distcp``). Deterministic (seed 0).
"""

from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_tiny_bert import make_tiny_bert


def make_training_checkpoint(out: str | Path) -> Path:
    import torch
    import torch.distributed.checkpoint as dcp
    from transformers import BertForPreTraining

    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    base = make_tiny_bert(out / "base")
    model = BertForPreTraining.from_pretrained(base)
    model.train()
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.tensor([[2, 17, 45, 99, 3, 0, 64, 5]])
    model(input_ids=ids, labels=ids, next_sentence_label=torch.tensor([0])).loss.backward()
    optim.step()
    with warnings.catch_warnings():  # one process, no process group: DCP says so
        warnings.simplefilter("ignore")
        dcp.save(
            {"model": model.state_dict(), "optim": optim.state_dict()},
            checkpoint_id=str(out / "step-1"),
        )
    return out


if __name__ == "__main__":
    target = make_training_checkpoint(sys.argv[1] if len(sys.argv) > 1 else "run")
    print(f"wrote {target}/base and {target}/step-1")
