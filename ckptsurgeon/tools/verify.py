"""``verify``: the release-pipeline gate. Does the output load, and is it what it should be?

Loads DIR with stock transformers ``from_pretrained(output_loading_info=True)`` (the class from
``--class``, else config.json's ``architectures``) and checks: no unexpected and no mismatched
keys; nothing left on the ``meta`` device; missing keys exactly those matched by
``expect_missing``; a forward pass on a small dummy batch gives finite outputs. With
``against``: every tensor that the output's ckptsurgeon metadata does not name as changed is
equal to SRC's, byte for byte (the recorded recipe is planned again over SRC, headers only,
to know which tensors it changed).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointNotFoundError, CkptSurgeonError
from ..formats.tokenizer_files import tokenizer_length
from ..patterns import as_patterns, matches
from ..record import KEY, decode, recipe_of


class VerifyError(CkptSurgeonError, RuntimeError):
    """verify cannot run: transformers missing, the model cannot be built or loaded."""


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"check": self.name, "ok": self.ok, "detail": self.detail}


@dataclass(frozen=True)
class Verification:
    path: str
    model_class: str
    checks: tuple[Check, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "class": self.model_class,
            "ok": self.ok,
            "checks": [c.to_json() for c in self.checks],
        }


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise VerifyError(
            "verify needs transformers, which is not installed",
            "transformers",
            "pip install 'ckptsurgeon[verify]'",
        ) from None
    return transformers


@contextlib.contextmanager
def _silenced(tf: Any, quiet: bool) -> Iterator[None]:
    """transformers' progress bars and log messages off (``quiet``), restored after."""
    if not quiet:
        yield
        return
    logging = tf.utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def _model_class(tf: Any, path: Path, name: str | None) -> Any:
    if name is None:
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            config = {}
        archs = config.get("architectures") if isinstance(config, dict) else None
        if not archs or not isinstance(archs, list) or not isinstance(archs[0], str):
            raise VerifyError(
                "config.json names no model class (no 'architectures')",
                str(path),
                "give the class with --class, e.g. --class BertForMaskedLM",
            )
        name = archs[0]
    cls = getattr(tf, name, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise VerifyError(
            f"transformers {tf.__version__} has no model class {name!r}",
            str(path),
            "give another --class",
        )
    return cls


def _dummy_inputs(model: Any) -> dict[str, Any]:
    import torch

    dummy = getattr(model, "dummy_inputs", None)
    if isinstance(dummy, dict) and dummy:
        return dict(dummy)
    config = model.config
    vocab = int(getattr(config, "vocab_size", 0) or 2)
    ids = torch.arange(16).reshape(2, 8) % max(vocab, 1)
    inputs: dict[str, Any] = {"input_ids": ids}
    if getattr(config, "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = ids
    return inputs


def _tensors(obj: Any) -> list[Any]:
    import torch

    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, list | tuple):
        return [t for v in obj for t in _tensors(v)]
    return []


def verify(
    path: str | os.PathLike[str],
    *,
    model_class: str | None = None,
    expect_missing: str | Sequence[str] = (),
    against: str | os.PathLike[str] | None = None,
    quiet: bool = False,
) -> Verification:
    """Load ``path`` (a local directory: the Hub is never contacted) with stock transformers
    and run every check (see the module docstring). ``quiet`` silences transformers' own
    loading bar and load report.

    >>> verify("bert-top3/", against="bert/").ok  # doctest: +SKIP
    True
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointNotFoundError(
            "no such file or directory", str(p), "give the directory of the checkpoint to verify"
        )
    if not p.is_dir():
        raise CheckpointNotFoundError(
            "not a directory: verify loads a model directory (config.json and weights)",
            str(p),
            "give the directory of the checkpoint to verify",
        )
    tf = _transformers()
    cls = _model_class(tf, p, model_class)
    patterns = as_patterns(expect_missing)
    try:
        with _silenced(tf, quiet):
            model, info = cls.from_pretrained(
                str(p), output_loading_info=True, local_files_only=True
            )
    except Exception as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise VerifyError(
            f"from_pretrained cannot load it as {cls.__name__} ({first})",
            str(p),
            "check config.json and the weights, or give --class",
        ) from None
    checks: list[Check] = []

    def keys(k: str) -> list[str]:
        return sorted(str(x) for x in info.get(k, []) or [])

    unexpected = keys("unexpected_keys")
    checks.append(Check("no unexpected keys", not unexpected, _listed(unexpected)))
    mismatched = [
        str(m[0]) if isinstance(m, tuple | list) else str(m)
        for m in info.get("mismatched_keys", []) or []
    ]
    checks.append(Check("no mismatched keys", not mismatched, _listed(sorted(mismatched))))
    on_meta = sorted(n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta)
    checks.append(Check("nothing on the meta device", not on_meta, _listed(on_meta)))
    missing = keys("missing_keys")
    expected = sorted(n for n in model.state_dict() if any(matches(n, q) for q in patterns))
    unexplained = [m for m in missing if m not in expected]
    absent = [e for e in expected if e not in missing]
    detail = "; ".join(
        part
        for part in (
            f"missing but not expected: {_listed(unexplained)}" if unexplained else "",
            f"expected missing but loaded: {_listed(absent)}" if absent else "",
        )
        if part
    ) or (f"{len(missing)} missing, as expected" if missing else "none missing")
    checks.append(Check("missing keys as expected", not unexplained and not absent, detail))
    with _silenced(tf, quiet):  # transformers 4.x warns about padding in the forward pass
        checks.append(_forward(model))
    length = tokenizer_length(p)
    embeddings = model.get_input_embeddings() if length is not None else None
    if length is not None and embeddings is not None:
        rows = int(embeddings.weight.shape[0])
        detail = f"len(tokenizer) {length}, embeddings {rows} rows"
        checks.append(Check("the tokenizer fits the embeddings", length <= rows, detail))
    if against is not None:
        checks.append(_against(p, against))
    return Verification(str(p), cls.__name__, tuple(checks))


def _listed(names: list[str]) -> str:
    if not names:
        return "none"
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _forward(model: Any) -> Check:
    import torch

    model.eval()
    try:
        with torch.no_grad():
            out = model(**_dummy_inputs(model))
    except Exception as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        return Check("forward pass is finite", False, f"the forward pass failed: {first}")
    floats = [t for t in _tensors(out) if t.is_floating_point()]
    bad = sum(int((~torch.isfinite(t)).sum()) for t in floats)
    return Check(
        "forward pass is finite",
        bool(floats) and bad == 0,
        f"{bad} non-finite values in the outputs" if bad else f"{len(floats)} output tensors",
    )


def _against(path: Path, src: str | os.PathLike[str]) -> Check:
    """Unchanged tensors equal SRC's: the recorded recipe, planned again over SRC, says which
    tensors it changed (and under which names the others now are)."""
    from ..formats.checkpoint import open_checkpoint
    from ..formats.prefixes import strip_prefixes
    from ..recipe import Recipe, plan_recipe
    from .compare import diff

    out = open_checkpoint(path)
    if KEY not in out.metadata:
        return Check("unchanged tensors equal SRC", False, "no ckptsurgeon metadata in the output")
    record = decode(out.metadata)
    if record is None:
        return Check("unchanged tensors equal SRC", False, "the ckptsurgeon metadata is not JSON")
    steps, strip = recipe_of(record)
    source = strip_prefixes(open_checkpoint(src), strip)
    plan = plan_recipe(Recipe.parse(steps), source)
    unchanged = [t for t in plan.tensors if t.action in ("keep", "rename")]
    renamed = {t.name: t.source.tensor for t in unchanged if hasattr(t.source, "tensor")}
    result = diff(src, path, strip_prefix_a=strip[0] if strip else None)
    by_name = {t.name: t for t in result.tensors}
    bad = []
    for name, origin in renamed.items():
        if name == origin:
            t = by_name.get(name)
            if t is None or t.status != "identical":
                bad.append(name)
        else:  # renamed: compare the bytes under both names
            bad.extend(_renamed_differs(source, out, origin, name))
    return Check(
        "unchanged tensors equal SRC",
        not bad,
        f"{len(renamed)} unchanged tensors identical" if not bad else f"differ: {_listed(bad)}",
    )


def _renamed_differs(src: Any, out: Any, origin: str, name: str) -> list[str]:
    a = {t.name: t for t in src.tensors}.get(origin)
    b = {t.name: t for t in out.tensors}.get(name)
    if a is None or b is None or (a.dtype, a.shape) != (b.dtype, b.shape):
        return [name]
    with src.reader() as ra, out.reader() as rb:
        return [] if ra.read(a) == rb.read(b) else [name]
