"""Lightning ``.ckpt`` files: the ``state_dict``, read without Lightning and without torch.

A Lightning checkpoint is a ``torch.save`` archive of a dict: ``state_dict`` (names start with
the LightningModule's attribute, usually ``model.``) beside ``optimizer_states``,
``lr_schedulers``, ``loops``, ``callbacks`` and ``hyper_parameters``. It is listed with an
allow-list (hyper-parameter containers become inert stand-ins; nothing is executed); only the
state dict's tensors are ever read, straight from the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UnsupportedFormatError
from ..ties import canonical_of
from .dcp import describe_not_read
from .tensorio import TensorInfo
from .torch_zip import LazyTensor, inert, lazy_tensors, list_archive

ALLOWED: dict[tuple[str, str], Any] = {
    ("lightning.fabric.utilities.data", "AttributeDict"): dict,
    ("lightning_fabric.utilities.data", "AttributeDict"): dict,
    ("pytorch_lightning.utilities.parsing", "AttributeDict"): dict,
    ("argparse", "Namespace"): inert("Namespace"),
}
MARKERS = ("pytorch-lightning_version", "optimizer_states", "loops", "lr_schedulers")


@dataclass
class LightningListing:
    tensors: list[TensorInfo]
    aliases: dict[str, str]
    not_read: list[str] = field(default_factory=list)


def is_lightning(path: Path) -> bool:
    """A ``.ckpt`` archive whose top level has a ``state_dict`` beside Lightning's entries."""
    try:
        obj = list_archive(path, ALLOWED)
    except Exception:  # not a torch archive, or one needing more: the torch reader says why
        return False
    return isinstance(obj, dict) and "state_dict" in obj and any(k in obj for k in MARKERS)


def list_lightning(path: Path) -> LightningListing:
    obj = list_archive(path, ALLOWED)
    state = obj.get("state_dict") if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise UnsupportedFormatError(
            "the Lightning checkpoint has no state_dict", str(path), "save it with the model"
        )
    tensors: list[TensorInfo] = []
    seen: dict[tuple[Any, ...], list[str]] = {}
    for name, t in state.items():
        if not isinstance(t, LazyTensor):
            continue
        if not t.contiguous:
            raise UnsupportedFormatError(
                f"tensor {name!r} is stored non-contiguous",
                str(path),
                "save the state dict with contiguous tensors (tensor.contiguous())",
            )
        key = (t.storage.key, t.storage_offset, t.shape, t.stride)
        seen.setdefault(key, []).append(str(name))
        tensors.append(TensorInfo(str(name), t.dtype, t.shape, t.nbytes, str(path), t.offset))
    aliases: dict[str, str] = {}
    for names in seen.values():
        if len(names) > 1 and tensors and any(t.nbytes for t in tensors if t.name in names):
            keep = canonical_of(names)
            aliases.update({n: keep for n in names if n != keep})
    groups: dict[str, list[int]] = {}
    for key, value in obj.items():
        if key == "state_dict":
            continue
        sizes = [t.nbytes for t in lazy_tensors(value)]
        if sizes or key in ("optimizer_states", "lr_schedulers", "loops", "callbacks"):
            groups["optimizer state" if key == "optimizer_states" else str(key)] = sizes
    return LightningListing(tensors, aliases, describe_not_read(groups))
