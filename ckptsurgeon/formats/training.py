"""Training checkpoints opened as a :class:`Checkpoint`: a DCP folder (or accelerate's
``save_state`` folder holding one), a DeepSpeed folder, a Lightning ``.ckpt``; and the tied
tensors DCP stores twice, folded when their bytes are equal."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..errors import CorruptCheckpointError
from .opened import Checkpoint, stamp

ACCELERATE_MODEL_DCP = "pytorch_model_fsdp_0"


def fold_equal_ties(ckpt: Checkpoint) -> None:
    """DCP stores a tied head a second time: fold it into its canonical name when the bytes are
    equal (as ``save_pretrained`` writes it once); differing bytes are an error."""
    from ..ties import head_ties, name_ties

    infos = {t.name: t for t in ckpt.tensors}
    ties = name_ties(list(infos), ckpt.config)
    maybe = head_ties(list(infos), ckpt.config)  # lm_head: folded only when equal
    with ckpt.reader() as reader:
        for alias, canonical in {**ties, **maybe}.items():
            a, c = infos[alias], infos[canonical]
            if (a.dtype, a.shape) != (c.dtype, c.shape):
                continue
            equal = all(
                bytes(x) == bytes(y)
                for x, y in zip(reader.chunks(a), reader.chunks(c), strict=True)
            )
            if not equal and alias in maybe:
                continue  # an untied head
            if not equal:
                raise CorruptCheckpointError(
                    f"tensors {alias!r} and {canonical!r} are tied in the model but their "
                    "stored values differ",
                    str(ckpt.path),
                    "set tie_word_embeddings to false in the config (--config-from) if the "
                    "model is untied, or re-save the checkpoint",
                )
            ckpt.aliases[alias] = canonical


def open_training_dir(d: Path) -> Checkpoint | None:
    """A DCP folder, accelerate's ``save_state`` folder or a DeepSpeed folder; else None."""
    from .dcp import is_dcp, list_dcp
    from .deepspeed import is_deepspeed, list_deepspeed

    dcp_dir = d / ACCELERATE_MODEL_DCP if is_dcp(d / ACCELERATE_MODEL_DCP) else d
    if is_dcp(dcp_dir):
        found = list_dcp(dcp_dir)
        return Checkpoint(
            path=d,
            format="dcp",
            files=found.files,
            tensors=found.tensors,
            not_read=found.not_read,
            ranks=found.ranks,
            detail=f"{found.ranks} rank{'s' * (found.ranks != 1)}"
            + (
                f", the model DCP {ACCELERATE_MODEL_DCP}/ of accelerate's save_state"
                if dcp_dir != d
                else ""
            ),
            config_dir=d,
            _stamps={str(f): stamp(f) for f in found.files},
        )
    if is_deepspeed(d):
        ds = list_deepspeed(d)
        aliases = ds.aliases
        infos = {t.name: t for t in ds.tensors}
        tensors = [*ds.tensors, *(replace(infos[c], name=a) for a, c in aliases.items())]
        return Checkpoint(
            path=d,
            format="deepspeed",
            files=ds.files,
            tensors=tensors,
            aliases=dict(aliases),
            not_read=ds.not_read,
            ranks=ds.ranks,
            detail=f"ZeRO stage {ds.stage}, tag {ds.folder.name}, {ds.ranks} ranks: the fp32 "
            "master weights",
            config_dir=d,
            _stamps={str(f): stamp(f) for f in ds.files},
        )
    return None


def lightning_hint(ckpt: Checkpoint) -> str:
    """Lightning names start with the LightningModule's attribute (``model.``): the hint to
    strip it, or '' when they do not all start with one."""
    if ckpt.format != "lightning" or not ckpt.names:
        return ""
    first = ckpt.names[0].split(".", 1)[0] + "."
    if not all(n.startswith(first) for n in [*ckpt.names, *ckpt.aliases]):
        return ""
    return (
        f"names start with {first!r}, the LightningModule's attribute: pass --strip-prefix "
        f"{first} to write them as the model names them"
    )


def open_lightning(p: Path) -> Checkpoint:
    from .lightning import list_lightning

    found = list_lightning(p)
    ckpt = Checkpoint(
        path=p,
        format="lightning",
        files=[p],
        tensors=found.tensors,
        aliases=found.aliases,
        not_read=found.not_read,
        config_dir=p.parent,
        _stamps={str(p): stamp(p)},
    )
    hint = lightning_hint(ckpt)
    if hint:
        ckpt.notes.append(hint)
    return ckpt
