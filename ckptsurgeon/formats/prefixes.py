"""Names as saved from wrapped models: ``module.`` (DDP), ``_orig_mod.`` (torch.compile),
``model.`` (a LightningModule's attribute), and ``--strip-prefix``, which reads them without it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ..errors import SelectionError
from .checkpoint import Checkpoint

WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def wrapper_prefix(names: Sequence[str]) -> str | None:
    """The wrapper prefix (DDP ``module.``, torch.compile ``_orig_mod.``) every name starts with."""
    for prefix in WRAPPER_PREFIXES:
        if names and all(n.startswith(prefix) for n in names):
            return prefix
    return None


def wrapper_hint(names: Sequence[str]) -> str:
    """A hint toward ``--strip-prefix`` when every name carries a wrapper prefix, else ''."""
    prefix = wrapper_prefix(names)
    if prefix is None:
        return ""
    return f"names start with {prefix!r} (saved from a wrapped model): pass --strip-prefix {prefix}"


def _dotted_prefix(prefix: str, names: Sequence[str], where: str) -> str:
    """``module`` means ``module.`` when every name starts with ``module.``; otherwise a prefix
    that does not end at a dot would leave names starting with ``.`` or cut a word: refused."""
    if not prefix or prefix.endswith("."):
        return prefix
    dotted = prefix + "."
    if names and all(n.startswith(dotted) for n in names):
        return dotted
    raise SelectionError(
        f"--strip-prefix {prefix!r} does not end with a dot and not every name starts with "
        f"{dotted!r}",
        where,
        f"give --strip-prefix {dotted!r} to strip it where present",
    )


def normalise_prefixes(ckpt: Checkpoint, prefixes: str | Sequence[str]) -> list[str]:
    """``--strip-prefix`` values as they will be applied (``module`` -> ``module.``)."""
    return normalise_name_prefixes(prefixes, [*ckpt.names, *ckpt.aliases], str(ckpt.path))


def normalise_name_prefixes(
    prefixes: str | Sequence[str], names: Sequence[str], where: str
) -> list[str]:
    """``module`` means ``module.`` when every one of ``names`` starts with ``module.``."""
    if isinstance(prefixes, str):
        prefixes = (prefixes,)
    return [_dotted_prefix(p, names, where) for p in prefixes]


def strip_first_prefix(name: str, prefixes: Sequence[str]) -> str:
    """``name`` without the first of ``prefixes`` it starts with (never the whole name)."""
    for prefix in prefixes:
        if prefix and name.startswith(prefix) and len(name) > len(prefix):
            return name[len(prefix) :]
    return name


def require_a_prefix(names: Sequence[str], prefixes: Sequence[str], where: str) -> None:
    """Refuse prefixes that strip nothing from any of ``names``."""
    if not any(strip_first_prefix(n, prefixes) != n for n in names):
        raise SelectionError(
            "no tensor name starts with " + " or ".join(repr(p) for p in prefixes),
            where,
            f"names start like {names[0]!r}" if names else "check the prefix",
        )


def strip_prefixes(ckpt: Checkpoint, prefixes: str | Sequence[str]) -> Checkpoint:
    """A view of ``ckpt`` with the first matching prefix removed from every name.

    For checkpoints saved from wrapped models: ``module.`` (DistributedDataParallel) or
    ``_orig_mod.`` (torch.compile), which transformers does not strip. ``module`` without the
    dot is read as ``module.`` when every name starts with ``module.``. Two names that become
    one are an error.
    """
    prefixes = normalise_prefixes(ckpt, prefixes)
    if not prefixes:
        return ckpt
    require_a_prefix([*ckpt.names, *ckpt.aliases], prefixes, str(ckpt.path))

    def strip(name: str) -> str:
        return strip_first_prefix(name, prefixes)

    seen: dict[str, str] = {}
    tensors = []
    for t in ckpt.tensors:
        new = strip(t.name)
        if new in seen:
            raise SelectionError(
                f"--strip-prefix makes {seen[new]!r} and {t.name!r} the same name {new!r}",
                str(ckpt.path),
                "strip a different prefix, or drop one of the two first",
            )
        seen[new] = t.name
        tensors.append(replace(t, name=new, stored_name=t.key) if new != t.name else t)
    aliases = {strip(a): strip(c) for a, c in ckpt.aliases.items()}
    return replace(ckpt, tensors=tensors, aliases=aliases)
