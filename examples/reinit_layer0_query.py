"""Re-initialise only layer 0's query projection (the example of the note that started this).

python examples/reinit_layer0_query.py WORKDIR
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch
from make_tiny_bert import make_tiny_bert
from transformers import BertForMaskedLM

import ckptsurgeon


def main(work: Path) -> None:
    src = make_tiny_bert(work / "pretrained")
    result = ckptsurgeon.reinit(
        src, work / "query0", ["bert.encoder.layer.0.attention.self.query.*"], seed=42
    )
    for t in result.plan.changed():
        print(f"{t.name}: {t.rule}")
    before = BertForMaskedLM.from_pretrained(src)
    after = BertForMaskedLM.from_pretrained(work / "query0")
    q0, q0_new = (
        before.bert.encoder.layer[0].attention.self.query,
        after.bert.encoder.layer[0].attention.self.query,
    )
    assert not torch.equal(q0.weight, q0_new.weight) and torch.all(q0_new.bias == 0)
    key = before.bert.encoder.layer[0].attention.self.key.weight
    assert torch.equal(key, after.bert.encoder.layer[0].attention.self.key.weight)
    print("layer 0 query re-initialised; every other tensor is unchanged")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()))
