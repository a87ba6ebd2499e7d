"""The files beside the weights: what is copied into DEST, what is left out and why.

A model directory holds more than weights: config.json, tokenizer files, sentence-transformers
modules (``1_Pooling/``, ``2_Dense/``), a PEFT ``adapter/``. Those are copied into a directory
DEST as they are. Left out, each named in a warning:

- weights of the root model in another name or format (``*.bin``, ``*.onnx``, ``*.gguf``... and
  export folders such as ``onnx/``): beside the new weights they would be stale;
- symbolic links that lead out of SRC (a link to ``/etc`` or to a secret must not copy it), except
  into the same Hugging Face cache repository folder (``models--ORG--NAME/``), whose snapshots are
  links into ``blobs/``; links are copied as regular files;
- directory links back to a folder already copied (a loop), and FIFOs, sockets and devices, which
  are never opened.

Planning only lists directories and stats files: :func:`plan_side_files` is part of a plan and is
what ``--dry-run`` reports.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import DestinationError, SourceReadError

TMP_SUFFIX = ".ckptsurgeon-tmp"
OLD_SUFFIX = ".ckptsurgeon-old"
LOCK_SUFFIX = ".ckptsurgeon-lock"

# Files that hold weights of some framework, or an index of them.
_WEIGHT_FILE_RE = re.compile(
    r"^(.*\.(safetensors|bin|pt|pth|ckpt|h5|msgpack|gguf|ggml|onnx|onnx_data|tflite|ot|npz|pb"
    r"|mlmodel|engine|plan)|.*\.(safetensors|bin|pt|pth)\.index\.json|.*\.onnx\.data"
    r"|model\.ckpt.*)$"
)
# Root folders that hold the root model exported to another runtime, or an earlier training step.
_EXPORT_DIR_RE = re.compile(r"^(onnx|openvino|coreml|tflite|gguf|tensorrt|checkpoint-\d+)$")
# Files of a checkpoint directory that are not weights (what save_pretrained and tokenizers write).
_CHECKPOINT_FILE_RE = re.compile(
    r"^(.*\.(json|txt|model|md|tiktoken|bpe|vocab|spm|jinja|yaml|yml)|\.gitattributes|LICENSE.*"
    r"|(configuration|modeling|tokenization|processing|image_processing|feature_extraction)_\w+\.py)$"
)
HF_CACHE_REPO_RE = re.compile(r"^(models|datasets|spaces)--.+")


def is_weight_file(name: str) -> bool:
    """Whether a file name is a weight file (or weight index) of some framework."""
    return bool(_WEIGHT_FILE_RE.match(name))


@dataclass(frozen=True)
class SideFiles:
    """What goes beside the weights in a directory DEST."""

    files: tuple[tuple[str, str], ...] = ()  # (relative posix path in DEST, path to read)
    dirs: tuple[str, ...] = ()  # relative folders to create, parents first
    notes: tuple[str, ...] = ()  # one warning per kind of thing left out
    outside: tuple[tuple[str, str], ...] = ()  # links out of SRC left out: (name, target)

    @property
    def top_level(self) -> list[str]:
        """The copied entries at DEST's top level (``name`` or ``name/``), sorted."""
        out = {rel.split("/", 1)[0] + ("/" if "/" in rel else "") for rel, _ in self.files}
        out.update(d.split("/", 1)[0] + "/" for d in self.dirs)
        return sorted(out)


def _inside(path: str, folders: list[str]) -> bool:
    return any(path == f or path.startswith(f.rstrip(os.sep) + os.sep) for f in folders)


def cache_repo_folder(root: Path) -> str | None:
    """The Hugging Face cache repository folder (``.../models--ORG--NAME``) holding ``root``."""
    for parent in Path(os.path.abspath(root)).parents:
        if HF_CACHE_REPO_RE.match(parent.name) and (parent / "blobs").is_dir():
            return os.path.realpath(parent)
    return None


def plan_side_files(root: Path | None, own_files: list[Path]) -> SideFiles:
    """Walk ``root`` (the source directory) and decide, file by file, what DEST gets.

    ``own_files`` are the weight files being read (not reported as left out)."""
    if root is None:
        return SideFiles()
    root_real = os.path.realpath(root)
    allowed = [root_real]
    repo = cache_repo_folder(root)
    if repo is not None:
        allowed.append(repo)
    own = {os.path.realpath(f) for f in own_files}
    files: list[tuple[str, str]] = []
    dirs: list[str] = []
    stale: list[str] = []
    outside: list[tuple[str, str]] = []
    read_through: list[str] = []
    loops: list[str] = []
    special: list[str] = []
    broken: list[str] = []
    visited = {root_real}

    def walk(folder: str, rel: str) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            raise SourceReadError(
                f"cannot list the source directory ({(exc.strerror or str(exc)).lower()})",
                folder,
                "check its permissions",
            ) from None
        for entry in entries:
            name, path = entry.name, entry.path
            relname = rel + name
            if not rel and name.endswith((TMP_SUFFIX, OLD_SUFFIX, LOCK_SUFFIX)):
                continue
            try:
                if entry.is_symlink():
                    target = os.path.realpath(path)
                    if not _inside(target, allowed):
                        if not rel and target in own:  # the weights themselves: read, not copied
                            read_through.append(f"{relname} -> {target}")
                        else:
                            outside.append((relname, target))
                        continue
                    st = os.stat(path)
                else:
                    st = entry.stat(follow_symlinks=False)
            except OSError:
                broken.append(relname)
                continue
            if stat.S_ISDIR(st.st_mode):
                real = os.path.realpath(path)
                if not rel and _EXPORT_DIR_RE.match(name):
                    stale.append(relname + "/")
                elif real in visited or _inside(root_real, [real]):
                    loops.append(relname + "/")
                else:
                    visited.add(real)
                    dirs.append(relname)
                    walk(path, relname + "/")
            elif stat.S_ISREG(st.st_mode):
                if not rel and is_weight_file(name):
                    if os.path.realpath(path) not in own:
                        stale.append(relname)
                    continue
                files.append((relname, path))
            else:
                special.append(relname)

    walk(str(root), "")
    notes = []
    if stale:
        notes.append(
            "not copied into DEST, weights of the source in another name or format that would be "
            "stale beside the new ones: " + ", ".join(stale)
        )
    if read_through:
        notes.append(
            "weights read through symbolic links that lead out of SRC: " + ", ".join(read_through)
        )
    if outside:
        notes.append(
            "not copied, symbolic links that lead out of SRC (copy them by hand if they belong "
            "to this model): " + ", ".join(f"{name} -> {target}" for name, target in outside)
        )
    if loops:
        notes.append("not copied, links back to a folder already copied: " + ", ".join(loops))
    if special:
        notes.append("not copied, FIFOs, sockets or devices (never opened): " + ", ".join(special))
    if broken:
        notes.append("not copied, broken links or unreadable entries: " + ", ".join(broken))
    return SideFiles(tuple(files), tuple(dirs), tuple(notes), tuple(outside))


# What --config-from takes from its model folder: the files a training checkpoint lacks.
_REFERENCE_FILE_RE = re.compile(
    r"^(config\.json|generation_config\.json|tokenizer(_config)?\.json|tokenizer\.model"
    r"|special_tokens_map\.json|added_tokens\.json|vocab\.(txt|json)|merges\.txt"
    r"|spiece\.model|sentencepiece\.bpe\.model|chat_template\.jinja|preprocessor_config\.json)$"
)
NO_CONFIG_WARNING = (
    "a training checkpoint has no config.json or tokenizer: DEST gets none; pass --config-from "
    "REF (the model folder or Hub id it was trained from) to write them beside the weights"
)


def with_reference_files(side: SideFiles, reference: Path) -> SideFiles:
    """``side`` with ``--config-from``'s config.json, generation_config.json and tokenizer
    files (those replace the source's of the same name)."""
    chosen = []
    for entry in sorted(os.scandir(reference), key=lambda e: e.name):
        if _REFERENCE_FILE_RE.match(entry.name) and entry.is_file():
            chosen.append((entry.name, entry.path))
    names = {rel for rel, _ in chosen}
    files = [f for f in side.files if f[0] not in names] + chosen
    return SideFiles(tuple(sorted(files)), side.dirs, side.notes, side.outside)


def copy_side_files(side: SideFiles, target: Path) -> None:
    """Copy the planned files into ``target`` as regular files (links are followed once, to the
    target that planning checked)."""
    for rel in side.dirs:
        (target / rel).mkdir()
    for rel, source in side.files:
        st = os.stat(source)
        if not stat.S_ISREG(st.st_mode):  # replaced by something else since planning
            raise SourceReadError(
                "a file beside the weights is no longer a regular file", source, "run again"
            )
        shutil.copyfile(source, target / rel)


def check_replaceable(dest: Path, recorded: set[str]) -> None:
    """Refuse to replace a directory DEST unless it holds only a checkpoint.

    Allowed: weight files, indexes, the files that checkpoint directories carry (config,
    tokenizer, README...), folders of such files, and whatever ckptsurgeon recorded copying into
    it (``recorded``, relative paths). Anything else is named in the error."""

    def foreign(folder: Path, rel: str) -> str | None:
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            relname = rel + entry.name
            if relname in recorded:
                continue
            if entry.is_dir(follow_symlinks=False):
                found = foreign(Path(entry.path), relname + "/")
                if found is not None:
                    return found
                continue
            regular_or_link = entry.is_file(follow_symlinks=False) or entry.is_symlink()
            if regular_or_link and (
                is_weight_file(entry.name) or _CHECKPOINT_FILE_RE.match(entry.name)
            ):
                continue
            return relname
        return None

    try:
        found = foreign(dest, "")
    except OSError as exc:
        raise DestinationError(
            f"cannot look inside the destination ({(exc.strerror or str(exc)).lower()})",
            str(dest),
            "remove it by hand or choose another path",
        ) from None
    if found is not None:
        raise DestinationError(
            f"destination holds {found!r}, which is not part of a checkpoint; --overwrite "
            "replaces only a checkpoint directory",
            str(dest),
            "remove DEST by hand if you mean to replace it, or choose another path",
        )
