"""The transformers way: from_pretrained -> _init_weights on chosen modules -> save_pretrained.

python benchmarks/transformers_reinit.py SRC_DIR DEST_DIR TOP
"""

import sys

import torch
from transformers import AutoModelForPreTraining

src, dest, top = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = AutoModelForPreTraining.from_pretrained(src)
layers = model.bert.encoder.layer
chosen = [*layers[len(layers) - top :], model.bert.pooler]
with torch.no_grad():
    for block in chosen:
        for module in block.modules():
            module._is_hf_initialized = False  # v5: loaded modules are flagged and skipped
            for p in module.parameters(recurse=False):
                p._is_hf_initialized = False
            model._init_weights(module)
model.save_pretrained(dest)
