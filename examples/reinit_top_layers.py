"""Re-initialise the top 3 encoder layers and the pooler before fine-tuning a classifier.

Zhang et al., "Revisiting Few-sample BERT Fine-tuning": on small data, re-initialising the top
layers of a pretrained BERT helps. ckptsurgeon does it offline; the result loads with stock
``from_pretrained`` and no code changes.

    python examples/reinit_top_layers.py WORKDIR
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch
from make_tiny_bert import make_tiny_bert
from transformers import BertForSequenceClassification

import ckptsurgeon


def main(work: Path) -> None:
    src = make_tiny_bert(work / "pretrained", layers=6)  # BertForPreTraining, like bert-base

    result = ckptsurgeon.reinit(src, work / "top3", top_layers=3, pooler=True, seed=0)
    print(f"re-initialised {result.plan.count('reinit')} tensors, kept {result.plan.count('keep')}")

    model, info = BertForSequenceClassification.from_pretrained(
        work / "top3", num_labels=2, output_loading_info=True
    )
    # only the new classifier is missing; the pretraining heads are ignored
    assert sorted(info["missing_keys"]) == ["classifier.bias", "classifier.weight"], info
    layer5 = model.bert.encoder.layer[5]
    assert torch.all(layer5.output.LayerNorm.weight == 1)
    assert torch.all(model.bert.pooler.dense.bias == 0)
    print(
        "loaded BertForSequenceClassification: top 3 layers and pooler are fresh; "
        "ready to fine-tune"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()))
