"""Checkpoints written by other projects (../shared/real-checkpoints): read, convert, reinit, drop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import REAL, assert_bitwise_equal, real_checkpoints, reference_state

from ckptsurgeon import convert, drop, open_checkpoint, reinit
from ckptsurgeon.plan.selection import find_layer_stacks

pytestmark = [
    pytest.mark.roundtrip,
    pytest.mark.skipif(not REAL.is_dir(), reason="../shared/real-checkpoints is absent"),
]
CHECKPOINTS = real_checkpoints()
IDS = [p.name for p in CHECKPOINTS]


def _load(path: Path):
    import transformers

    cfg = json.loads((path / "config.json").read_text())
    if "model_type" not in cfg:  # camphr-bert-base-japanese-test: AutoModel refuses it
        cls = transformers.BertModel
        if any(k.startswith("bert.") for k in reference_state(path)):
            cls = transformers.BertForPreTraining
        return cls.from_pretrained(str(path), output_loading_info=True)
    arch = (cfg.get("architectures") or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    if cls is None:
        cls = transformers.AutoModel
    return cls.from_pretrained(str(path), output_loading_info=True)


def _info(info):
    return {k: sorted(v) if isinstance(v, set | list) else v for k, v in info.items()}


@pytest.mark.parametrize("path", CHECKPOINTS, ids=IDS)
def test_reads_every_real_checkpoint(path):
    ckpt = open_checkpoint(path)
    source = reference_state(path)
    assert sorted(ckpt.names) == sorted(source)
    with ckpt.reader() as reader:
        for info in ckpt.tensors:
            raw = reader.read(info)
            assert (
                raw
                == source[info.name].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            )


@pytest.mark.parametrize("path", CHECKPOINTS, ids=IDS)
def test_convert_reinit_drop_and_load(path, tmp_path):
    source = reference_state(path)
    _, base_info = _load(path)
    base_missing = set(_info(base_info)["missing_keys"])

    convert(path, tmp_path / "conv")
    for name, tensor in reference_state(tmp_path / "conv").items():
        assert_bitwise_equal(tensor, source[name], name)
    _, info = _load(tmp_path / "conv")
    assert set(_info(info)["missing_keys"]) == base_missing

    stacks = find_layer_stacks(list(source))
    assert len(stacks) == 1, stacks
    ((prefix, layers),) = stacks.items()
    res = reinit(path, tmp_path / "re", top_layers=1, seed=0)
    changed = {t.name for t in res.plan.tensors if t.action == "reinit"}
    assert changed and all(n.startswith(f"{prefix}.{layers[-1]}.") for n in changed)
    out = reference_state(tmp_path / "re")
    for name, tensor in out.items():
        if name not in changed:
            assert_bitwise_equal(tensor, source[name], name)
    model, info = _load(tmp_path / "re")
    assert set(_info(info)["missing_keys"]) == base_missing
    assert _info(info)["unexpected_keys"] == _info(base_info)["unexpected_keys"]

    res = drop(path, tmp_path / "dr", [f"{prefix}.0.*"])
    dropped = {t.name for t in res.plan.dropped}
    _, info = _load(tmp_path / "dr")
    missing = set(_info(info)["missing_keys"]) - base_missing
    # transformers reports names relative to the model it builds: compare on the suffix
    assert {m.split("layer.0.", 1)[1] for m in missing} == {
        d.split("layer.0.", 1)[1] for d in dropped
    }
    assert not list((tmp_path / "dr").glob("*.bin"))
