"""Text -> tokenizer -> memory-mapped token shards, prepared once and shared by every run; training batches.

A prepared data folder (`study.data.dir`) holds:

    tokenizer/   a transformers tokenizer (a byte-level BPE trained here, or a pretrained one)
    val.bin      the held-out tokens: whole documents, never in the training shard
    train.bin    the training tokens
    meta.json    the recipe hash (`recipe_identity`: settings, corpus content, the recipe's code) and the data
                 identity below

Documents are read in an order fixed by `study.data.seed`, separated by the end-of-text token. A held-out
prefix of the documents fills the validation shard; the tokenizer is trained and the training shard written
only from the documents after it, so no held-out text is ever seen by the tokenizer or the model. The identity
(`ensure_prepared`'s return value) goes into every run spec: its `hash` covers the shards and tokenizer.

An interrupted preparation resumes: every `CHECKPOINT_BATCHES` batches the shards are synced and the corpus
stream's position saved (a `datasets` stream state), and the next call continues the stream from there: it
never reads (for the hub: downloads) again a file before the one it stopped in, and tokenizes nothing twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import inspect
import json
import os
import re
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from ..codehash import normalised_code
from ..params.settings import ParamsError, StudyParams
from ..params.study import DataSettings, TokenizerSettings
from ..provenance import stable_hash
from .corpus import (
    END_OF_TEXT,
    HELD_OUT_CHARS_PER_TOKEN,
    after_held_out,
    corpus_rows,
    corpus_texts,
    documents,
    files_hash,
    held_out_flags,
    make_tokenizer,
    source_files,
    tokenizer_label,
    train_bpe,
)
from .shards import TOKENS_PER_PROCESS, DocumentEncoder, ShardWriter, write_shards

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# datasets, tokenizers, transformers and torch are imported where they are used: checking that prepared data
# is up to date (every pipeline stage does) then costs milliseconds instead of seconds of imports.

# Bump when the shard format changes, or the recipe in code outside `RECIPE_CODE`, so old folders are rebuilt.
FORMAT_VERSION = 3
COMMIT = re.compile(r"[0-9a-f]{40}")  # a hub repository's commit hash



def folder_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def saved_tokenizer(
    data: DataSettings, settings: TokenizerSettings, files: list[Path], folder: Path
) -> PreTrainedTokenizerBase:
    """Make the tokenizer and save it to `folder` (kept from an interrupted build); returns it as saved."""
    if not folder.exists():
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        make_tokenizer(data, settings, files).save_pretrained(partial)
        partial.rename(folder)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def pinned_revisions(data: DataSettings, settings: TokenizerSettings) -> dict[str, str]:
    """The hub revisions the params pin (only those set, so unpinned data keeps its identity)."""
    revisions = {"hub_dataset": data.hub_revision if data.source == "hub" else None,
                 "tokenizer": settings.revision if settings.kind == "pretrained" else None}
    return {name: revision for name, revision in revisions.items() if revision}


def tokenizing_processes(data: DataSettings) -> int:
    """`data.num_proc`, else one process per `TOKENS_PER_PROCESS` tokens to write, at most one per core."""
    if data.num_proc:
        return data.num_proc
    return max(1, min(os.cpu_count() or 1, -(-(data.train_tokens + data.val_tokens) // TOKENS_PER_PROCESS)))


def build(params: StudyParams, files: list[Path], folder: Path, target: Path, recipe_key: str,
          corpus_hash: str) -> dict[str, Any]:
    """Prepare everything into `folder`, resuming what an interrupted build of the same recipe left there;
    meta.json is written last."""
    data, settings = params.study.data, params.study.tokenizer
    tokenizer = saved_tokenizer(data, settings, files, folder / "tokenizer")
    vocab_size = len(tokenizer)
    dtype = np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)
    encode = DocumentEncoder(str(folder / "tokenizer" / "tokenizer.json"), tokenizer.eos_token_id)
    written = write_shards(corpus_rows(data, files), encode, folder, data, dtype, tokenizing_processes(data))
    revisions = pinned_revisions(data, settings)
    identity = {
        "dir": str(target),
        "hash": stable_hash([written["shards_hash"], folder_hash(folder / "tokenizer"), *revisions.values()]),
        "corpus_hash": corpus_hash,
        "vocab_size": vocab_size,
        "tokenizer": tokenizer_label(settings),
        "seed": data.seed,
        "train_tokens": written["train_tokens"],
        "val_tokens": written["val_tokens"],
        "dtype": dtype.name,
        **({"revisions": revisions} if revisions else {}),
    }
    (folder / "meta.json").write_text(json.dumps({"recipe": recipe_key, "identity": identity}, indent=2))
    return identity


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock held while preparing, so two processes never build the same folder at once."""
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def read_meta(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def corpus_identity(data: DataSettings, files: list[Path]) -> str:
    """Content hash of a file corpus; for the hub, what names its rows (the pinned revision above all)."""
    if files:
        return files_hash(files)
    return stable_hash({key: getattr(data, key) for key in ("hub_dataset", "hub_config", "hub_split",
                                                            "hub_revision", "text_column")})


# What decides the shards' content, counted by what it computes (optsweep.codehash): an edit of a comment, of
# the layout or of anything else in this module (locking, resuming, the process pool) keeps every prepared folder.
RECIPE_CODE = (corpus_rows, documents, corpus_texts, held_out_flags, after_held_out, train_bpe, make_tokenizer,
               DocumentEncoder, ShardWriter, write_shards)
RECIPE_CONSTANTS = {"end_of_text": END_OF_TEXT, "held_out_chars_per_token": HELD_OUT_CHARS_PER_TOKEN}


def recipe_code() -> str:
    return stable_hash([normalised_code(inspect.getsource(part)) for part in RECIPE_CODE])


def check_pinned(data: DataSettings, tokenizer: TokenizerSettings) -> None:
    """With `study.data.require_revisions`, what comes from the hub must name its commit (a branch or tag moves)."""
    if not data.require_revisions:
        return
    pins = {"study.data.hub_revision": (data.hub_revision, data.source == "hub", data.hub_dataset),
            "study.tokenizer.revision": (tokenizer.revision, tokenizer.kind == "pretrained", tokenizer.name)}
    for key, (revision, from_hub, name) in pins.items():
        if from_hub and not (revision and COMMIT.fullmatch(revision)):
            raise ParamsError(f"{key}: {revision or 'unset'}; study.data.require_revisions asks for the commit of "
                              f"{name} on the hub (40 hex digits, its 'Files and versions' history)")


def recipe_identity(params: StudyParams, files: list[Path]) -> dict[str, Any]:
    """What the prepared data is a function of: its settings (not where it goes), the corpus, the recipe's
    code. Prepared data is rebuilt only when this changes; `optsweep prepare --recipe` writes it, for dvc.yaml."""
    data = params.study.data
    check_pinned(data, params.study.tokenizer)
    return {
        "format": FORMAT_VERSION,
        "code": recipe_code(),
        "constants": RECIPE_CONSTANTS,
        "data": data.model_dump(mode="json", exclude={"dir", "num_proc", "require_revisions"}),
        "tokenizer": params.study.tokenizer.model_dump(mode="json"),
        "corpus_hash": corpus_identity(data, files),
    }


def write_recipe(params: StudyParams, path: Path) -> None:
    """Write the recipe identity (a small file that dvc.yaml's `prepare` stage depends on), only if it changed:
    an unchanged file keeps its timestamp, and DVC then sees nothing to rebuild."""
    text = json.dumps(recipe_identity(params, source_files(params.study.data)), indent=2, sort_keys=True) + "\n"
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def ensure_prepared(params: StudyParams, replace: bool = False) -> dict[str, Any]:
    """Prepare the token shards named by `params` (or reuse them when nothing changed); return the identity.

    `study.data.dir` holding data of other settings is replaced only with `replace` (the `prepare` command:
    the params changed). Any other caller (a sweep, `train` or `bench` with `--set study.data...`) prepares
    its settings in a sibling folder, `<dir>-<recipe>`, and leaves the study's data alone.

    The folder is built under a temporary name (one per recipe) and renamed into place, so a killed
    preparation never leaves a half-written shard that a later call would reuse; the next call resumes it.
    """
    data = params.study.data
    files = source_files(data)
    recipe = recipe_identity(params, files)
    recipe_key = stable_hash(recipe)
    target = Path(os.path.abspath(data.dir))  # the identity's `dir` then means the same on every node
    if target.is_file() or (target.is_dir() and any(target.iterdir()) and read_meta(target) is None):
        raise ParamsError(f"study.data.dir: {target} exists and is not a prepared data folder; name a new folder")
    meta = read_meta(target)
    if meta and meta["recipe"] != recipe_key and not replace:
        target = target.with_name(f"{target.name}-{recipe_key[:8]}")
        print(f"study.data.dir: {data.dir} holds data prepared with other settings; it is kept, and these "
              f"settings use {target}", file=sys.stderr, flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    with locked(target.parent / f".{target.name}.lock"):
        meta = read_meta(target)
        if meta and meta["recipe"] == recipe_key:
            return {**meta["identity"], "dir": str(target)}  # where it is now (the folder may have moved)
        building = target.parent / f".{target.name}.build-{recipe_key}"
        for stale in target.parent.glob(f".{target.name}.build-*"):
            if stale != building:  # a build of other settings, never to be finished
                shutil.rmtree(stale)
        building.mkdir(exist_ok=True)
        identity = build(params, files, building, target, recipe_key, recipe["corpus_hash"])
        if target.exists():
            retired = target.parent / f".{target.name}.old-{os.getpid()}"
            target.rename(retired)
            building.rename(target)
            shutil.rmtree(retired)
        else:
            building.rename(target)
    return identity
