"""Hugging Face repo ids as SRC: ``bert-base-uncased``, ``org/name``, ``org/name@revision``.

A SRC that is no local path but looks like a repo id is resolved with ``huggingface_hub`` (the
library users already have): the local cache first (``HF_HUB_CACHE``, else ``HF_HOME/hub``,
else ``~/.cache/huggingface/hub``), and only the cache when ``HF_HUB_OFFLINE`` is set. Online,
only the files needed are fetched: the weights in the one format that will be read
(safetensors first, else ``.bin``, with their index and shards), config and tokenizer files and
other non-weight files; never both formats. The snapshot folder (symlinks into ``blobs/``) is
then read like any model directory; its files are copied into DEST as real files.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import CheckpointNotFoundError, first_line

_REPO_ID_RE = re.compile(
    r"^(?P<repo>[A-Za-z0-9][\w.\-]{0,95}(?:/[A-Za-z0-9][\w.\-]{0,95})?)(?:@(?P<rev>[\w.\-/]+))?$"
)
_TRUE = {"1", "ON", "YES", "TRUE"}


def cache_dir() -> Path:
    """Where huggingface_hub keeps its cache, from the environment as it is now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(home) / "hub"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE


def parse_repo_id(text: str) -> tuple[str, str | None] | None:
    """``("org/name", "revision")`` when ``text`` has the shape of a repo id, else None."""
    match = _REPO_ID_RE.match(text)
    if match is None or ".." in text or text.endswith((".safetensors", ".bin", ".json", ".pt")):
        return None
    return match.group("repo"), match.group("rev")


def resolve(src: str | os.PathLike[str], revision: str | None = None) -> Path:
    """SRC as a local path: itself when it exists, else the snapshot folder of a repo id."""
    path = Path(src)
    if path.exists() or path.is_symlink():
        return path
    parsed = parse_repo_id(str(src))
    if parsed is None:
        raise CheckpointNotFoundError(
            "no such file or directory", str(src), "check the path of the checkpoint"
        )
    repo, rev = parsed
    rev = revision or rev
    cache = cache_dir()
    hint = f"check the path, or download the model first: hf download {repo}" + (
        f" --revision {rev}" if rev else ""
    )
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - installed with ckptsurgeon
        raise CheckpointNotFoundError(
            "no such file or directory (and huggingface_hub is not installed to look it up as "
            "a repo id)",
            str(src),
            "pip install huggingface_hub",
        ) from None
    where = f"repo {repo!r}" + (f" at revision {rev!r}" if rev else "")
    try:  # the cache first, online too: a typo costs no network, a cached model no request
        return Path(snapshot_download(repo, revision=rev, cache_dir=cache, local_files_only=True))
    except Exception:  # not cached (or not complete): look on the Hub, unless offline
        if offline():
            raise CheckpointNotFoundError(
                f"no such file or directory, and {where} is not in the Hugging Face cache "
                f"(cache: {cache})",
                str(src),
                hint,
            ) from None
    files, commit, why = _on_the_hub(repo, rev)
    if files is None:
        raise CheckpointNotFoundError(
            f"no such file or directory, and {where} is not in the Hugging Face cache "
            f"(cache: {cache}); on the Hub: {why}",
            str(src),
            hint,
        )
    try:
        folder = snapshot_download(
            repo, revision=commit, cache_dir=cache, allow_patterns=_needed_files(files)
        )
    except Exception as exc:
        raise CheckpointNotFoundError(
            f"no such file or directory, and {where} could not be downloaded from the Hub "
            f"({first_line(exc)})",
            str(src),
            hint,
        ) from None
    return Path(folder)


# One request, no retries: a bare name that is a typo must fail in seconds, not after the
# five retries with back-off (23 s) that huggingface_hub makes for downloads.
HUB_TIMEOUT = 5.0


def _on_the_hub(repo: str, rev: str | None) -> tuple[list[str] | None, str | None, str]:
    """``(files, commit, "")`` of the repo on the Hub, or ``(None, None, what happened)``."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import (
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        info = HfApi().model_info(repo, revision=rev, timeout=HUB_TIMEOUT)
    except GatedRepoError:
        return None, None, "the repo is gated: accept its terms and log in (hf auth login)"
    except RepositoryNotFoundError:
        return None, None, "no such repo (or it is private: log in with hf auth login)"
    except RevisionNotFoundError:
        return None, None, f"the repo has no revision {rev!r}"
    except Exception as exc:  # no network, DNS, timeout, proxy...
        return None, None, f"the Hub could not be reached ({type(exc).__name__}: {first_line(exc)})"
    files = [s.rfilename for s in info.siblings or []]
    return files, info.sha or rev, ""


def _needed_files(files: list[str]) -> list[str]:
    """The files to fetch: one weight format (safetensors first) and every non-weight file."""
    from .sidefiles import _EXPORT_DIR_RE, is_weight_file

    weights = [f for f in files if "/" not in f and is_weight_file(f)]
    safe = [f for f in weights if f.endswith((".safetensors", ".safetensors.index.json"))]
    torch_bin = [f for f in weights if re.match(r"^pytorch_model.*\.bin(\.index\.json)?$", f)]
    chosen = safe or torch_bin or weights
    others = [
        f
        for f in files
        if ("/" in f and not _EXPORT_DIR_RE.match(f.split("/", 1)[0]))
        or ("/" not in f and not is_weight_file(f))
    ]
    return sorted({*chosen, *others})
