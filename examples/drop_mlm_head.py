"""Drop the masked-LM head and load the result as BertForSequenceClassification.

python examples/drop_mlm_head.py WORKDIR
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from make_tiny_bert import make_tiny_bert
from transformers import BertForSequenceClassification

import ckptsurgeon


def main(work: Path) -> None:
    src = make_tiny_bert(work / "pretrained")
    result = ckptsurgeon.drop(src, work / "headless", ["cls.*"])
    print("dropped: " + ", ".join(t.name for t in result.plan.changed()))
    _, info = BertForSequenceClassification.from_pretrained(
        work / "headless", num_labels=3, output_loading_info=True
    )
    assert not info["unexpected_keys"], info
    assert sorted(info["missing_keys"]) == ["classifier.bias", "classifier.weight"], info
    print("missing (initialised by the model):", ", ".join(sorted(info["missing_keys"])))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()))
