"""Build a tiny BERT with its WordPiece tokenizer offline, for trying `add-tokens`.

    python examples/make_tokenized_bert.py chem-bert

Writes config.json, model.safetensors, vocab.txt, tokenizer.json and tokenizer_config.json to
the given directory (replacing it). The weights are random but deterministic (seed 0); the
vocabulary is about a hundred word pieces of chemistry text, so "benzene" is split into pieces.
"""

from __future__ import annotations

import os
import shutil
import sys

# deepspeed, when installed (the test extra), announces on stdout the accelerator it guessed
# whenever transformers imports it (save_pretrained does): say it, so it stays quiet
os.environ.setdefault("DS_ACCELERATOR", "cpu")
from pathlib import Path

WORDS = (
    ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    + list("abcdefghijklmnopqrstuvwxyz0123456789[]().,-")
    + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    + ["the", "an", "of", "in", "is", "and", "ring", "acid", "ion", "chem", "##ical"]
    + ["ben", "##zene", "##ene", "eth", "##an", "##ol", "carbon", "bond", "water"]
)


def make_tokenized_bert(out: str | Path) -> Path:
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    vocab = out / "vocab.txt"
    vocab.write_text("\n".join(WORDS) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(vocab))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertForMaskedLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


if __name__ == "__main__":
    target = make_tokenized_bert(sys.argv[1] if len(sys.argv) > 1 else "chem-bert")
    print(f"wrote {target}")
