"""Build a tiny pretrained-style BERT offline, for trying ckptsurgeon.

A BertForPreTraining, like bert-base: pooler, masked-LM and next-sentence heads.

    python examples/make_tiny_bert.py tiny-bert

Writes config.json and model.safetensors to the given directory (replacing it). The weights are
random but deterministic (seed 0), so every run writes the same bytes.
"""

from __future__ import annotations

import os
import shutil
import sys

# deepspeed, when installed (the test extra), announces on stdout the accelerator it guessed
# whenever transformers imports it (save_pretrained does): say it, so it stays quiet
os.environ.setdefault("DS_ACCELERATOR", "cpu")
from pathlib import Path


def make_tiny_bert(out: str | Path, layers: int = 4) -> Path:
    import torch
    from transformers import BertConfig, BertForPreTraining

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    model = BertForPreTraining(config)
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out)
    return out


if __name__ == "__main__":
    target = make_tiny_bert(sys.argv[1] if len(sys.argv) > 1 else "tiny-bert")
    print(f"wrote {target}")
