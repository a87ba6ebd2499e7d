"""The ten-line script ckptsurgeon replaces: load_file -> edit -> save_file (no sync).

python benchmarks/naive_reinit.py SRC_DIR DEST_DIR LAYER_PREFIX N_LAYERS TOP [--pooler]
"""

import re
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

src, dest, prefix, n_layers, top = (
    sys.argv[1],
    sys.argv[2],
    sys.argv[3],
    int(sys.argv[4]),
    int(sys.argv[5]),
)
pooler = "--pooler" in sys.argv
files = sorted(Path(src).glob("*.safetensors"))
wanted = tuple(f"{prefix}.{i}." for i in range(n_layers - top, n_layers))
Path(dest).mkdir(parents=True, exist_ok=True)
for f in files:
    state = load_file(str(f))
    with torch.no_grad():
        for name, t in state.items():
            if not (name.startswith(wanted) or (pooler and "pooler.dense" in name)):
                continue
            if re.search("layer_?norm", name, re.I) and name.endswith("weight"):
                t.fill_(1.0)
            elif name.endswith("bias"):
                t.zero_()
            else:
                t.normal_(0.0, 0.02)
    save_file(state, str(Path(dest) / f.name), metadata={"format": "pt"})
