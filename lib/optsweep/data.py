"""Text -> tokenizer -> memory-mapped token shards, prepared once and shared by every run; training batches.

A prepared data folder (`study.data.dir`) holds:

    tokenizer/   a transformers tokenizer (a byte-level BPE trained here, or a pretrained one)
    val.bin      the held-out tokens: whole documents, never in the training shard
    train.bin    the training tokens
    meta.json    the recipe hash (settings + corpus content) and the data identity below

Documents are read in an order fixed by `study.data.seed`, separated by the end-of-text token. A held-out
prefix of the documents fills the validation shard; the tokenizer is trained and the training shard written
only from the documents after it, so no held-out text is ever seen by the tokenizer or the model. The identity
(`ensure_prepared`'s return value) goes into every run spec: its `hash` covers the shards and tokenizer.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import itertools
import json
import os
import shutil
import sysconfig
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from .config import DataSettings, ParamsError, StudyParams, TokenizerSettings
from .provenance import stable_hash

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

# datasets, tokenizers, transformers and torch are imported where they are used: checking that prepared data
# is up to date (every pipeline stage does) then costs milliseconds instead of seconds of imports.

# Bump when the shard format or the preparation recipe changes, so old folders are rebuilt.
FORMAT_VERSION = 2
END_OF_TEXT = "<|endoftext|>"
ENCODE_BATCH = 256  # documents per tokenizer call (the Rust tokenizer parallelises within a call)
HUB_SHUFFLE_BUFFER = 10_000
# The held-out prefix is measured in characters because it must be fixed before a tokenizer exists. BPE
# tokenizers compress text to 2-5 characters per token, so 8 fills the validation shard with room to spare
# (a build that falls short says so); the prefix's surplus documents are dropped, never trained on.
HELD_OUT_CHARS_PER_TOKEN = 8


# --- corpus sources ----------------------------------------------------------------------------------------


def source_files(data: DataSettings) -> list[Path]:
    """The local files of a `stdlib` or `files` corpus, sorted; [] for `hub`. Raises before any write."""
    if data.source == "stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        return sorted(p for p in root.rglob("*.py") if "site-packages" not in p.relative_to(root).parts)
    if data.source == "files":
        files: set[Path] = set()
        for pattern in data.paths:
            matches = glob.glob(os.path.expanduser(pattern), recursive=True)
            matched = [Path(p) for p in matches if Path(p).is_file()]
            if not matched:
                raise ParamsError(f"study.data.paths: {pattern!r} matches no file")
            files.update(matched)
        return sorted(files)
    return []


def files_hash(files: list[Path]) -> str:
    """Content hash of a file corpus: paths relative to their common folder (not the machine's) + bytes."""
    root = Path(os.path.commonpath(files)) if len(files) > 1 else files[0].parent
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def corpus_texts(data: DataSettings, files: list[Path]) -> Iterator[str]:
    """Documents in the order fixed by `data.seed`, streamed through `datasets` (nothing is cached)."""
    import datasets

    if data.source == "hub":
        rows = datasets.load_dataset(
            data.hub_dataset, data.hub_config, split=data.hub_split, streaming=True
        ).shuffle(seed=data.seed, buffer_size=HUB_SHUFFLE_BUFFER)
        column = data.text_column
    else:
        order = np.random.default_rng(data.seed).permutation(len(files))
        rows = datasets.load_dataset(
            "text", data_files=[str(files[i]) for i in order], sample_by="document",
            keep_linebreaks=True, encoding_errors="replace", split="train", streaming=True,
        )
        column = "text"
    for row in rows:
        if column not in row:
            raise ParamsError(f"study.data.text_column: no column {column!r}; the rows have {', '.join(row)}")
        if row[column]:
            yield row[column]


def held_out_flags(texts: Iterator[str], val_tokens: int) -> Iterator[tuple[bool, str]]:
    """Each document with whether it belongs to the held-out prefix (`HELD_OUT_CHARS_PER_TOKEN` x val_tokens)."""
    budget, seen = HELD_OUT_CHARS_PER_TOKEN * val_tokens, 0
    for text in texts:
        yield seen < budget, text
        seen += len(text)


def after_held_out(texts: Iterator[str], val_tokens: int) -> Iterator[str]:
    return (text for held_out, text in held_out_flags(texts, val_tokens) if not held_out)


# --- tokenizer ------------------------------------------------------------------------------------------------


def train_bpe(texts: Iterator[str], settings: TokenizerSettings) -> PreTrainedTokenizerFast:
    """A byte-level BPE (GPT-2 style, every byte representable) fit on the first `train_chars` characters."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    def first_chars() -> Iterator[str]:
        seen = 0
        for text in texts:
            yield text[: settings.train_chars - seen]
            seen += len(text)
            if seen >= settings.train_chars:
                return

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=settings.vocab_size, special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    bpe.train_from_iterator(first_chars(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=END_OF_TEXT)


def make_tokenizer(
    data: DataSettings, settings: TokenizerSettings, files: list[Path]
) -> PreTrainedTokenizerBase:
    if settings.kind == "pretrained":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(settings.name)
        if tokenizer.eos_token_id is None:
            raise ParamsError(f"study.tokenizer.name: {settings.name!r} has no end-of-text token to separate documents")
        return tokenizer
    return train_bpe(after_held_out(corpus_texts(data, files), data.val_tokens), settings)


def tokenizer_label(settings: TokenizerSettings) -> str:
    return settings.name if settings.kind == "pretrained" else f"bpe-{settings.vocab_size}"


# --- shards ---------------------------------------------------------------------------------------------------


class ShardWriter:
    """Appends token ids to a flat binary file up to a budget, hashing what it writes."""

    def __init__(self, path: Path, budget: int, dtype: np.dtype) -> None:
        self.file = path.open("wb")
        self.budget, self.dtype, self.written = budget, dtype, 0
        self.digest = hashlib.sha256()

    @property
    def full(self) -> bool:
        return self.written >= self.budget

    def write(self, ids: list[int]) -> None:
        chunk = np.asarray(ids[: self.budget - self.written], dtype=self.dtype)
        self.file.write(chunk.tobytes())
        self.digest.update(chunk.tobytes())
        self.written += len(chunk)

    def close(self) -> None:
        self.file.close()


def write_shards(
    texts: Iterator[str], tokenizer: PreTrainedTokenizerBase, folder: Path, data: DataSettings, dtype: np.dtype
) -> dict[str, Any]:
    """Tokenize documents in order: the held-out prefix into val.bin (cut at its budget, the surplus
    dropped), every later document into train.bin. Stops reading the corpus once train.bin is full."""
    val = ShardWriter(folder / "val.bin", data.val_tokens, dtype)
    train = ShardWriter(folder / "train.bin", data.train_tokens, dtype)
    corpus = hashlib.sha256()
    documents = held_out_flags(texts, data.val_tokens)
    for batch in iter(lambda: list(itertools.islice(documents, ENCODE_BATCH)), []):
        encoded = tokenizer([text for _, text in batch], add_special_tokens=False)["input_ids"]
        for (held_out, text), ids in zip(batch, encoded):
            corpus.update(text.encode("utf-8", "replace") + b"\0")
            (val if held_out else train).write(ids + [tokenizer.eos_token_id])
        if train.full:
            break
    val.close()
    train.close()
    if not val.full:
        raise ParamsError(
            f"study.data.val_tokens: the held-out documents gave only {val.written} of {data.val_tokens} tokens; "
            "add text or lower val_tokens"
        )
    if train.written == 0:
        raise ParamsError("study.data: no text left for the train shard; add text or lower val_tokens")
    return {
        "train_tokens": train.written,
        "val_tokens": val.written,
        "shards_hash": hashlib.sha256(val.digest.digest() + train.digest.digest()).hexdigest()[:16],
        "streamed_hash": corpus.hexdigest()[:16],
    }


def folder_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def build(
    params: StudyParams, files: list[Path], folder: Path, recipe_key: str, corpus_hash: str | None
) -> dict[str, Any]:
    """Prepare everything into `folder` (a fresh temporary one); meta.json is written last."""
    data, settings = params.study.data, params.study.tokenizer
    tokenizer = make_tokenizer(data, settings, files)
    tokenizer.save_pretrained(folder / "tokenizer")
    vocab_size = len(tokenizer)
    dtype = np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)
    written = write_shards(corpus_texts(data, files), tokenizer, folder, data, dtype)
    identity = {
        "dir": str(Path(data.dir)),
        "hash": stable_hash([written["shards_hash"], folder_hash(folder / "tokenizer")]),
        "corpus_hash": corpus_hash or written["streamed_hash"],
        "vocab_size": vocab_size,
        "tokenizer": tokenizer_label(settings),
        "seed": data.seed,
        "train_tokens": written["train_tokens"],
        "val_tokens": written["val_tokens"],
        "dtype": dtype.name,
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


def ensure_prepared(params: StudyParams) -> dict[str, Any]:
    """Prepare the token shards named by `params` (or reuse them when nothing changed); return the identity.

    The folder is built under a temporary name and renamed into place, so a killed preparation never
    leaves a half-written shard that a later call would reuse.
    """
    data, settings = params.study.data, params.study.tokenizer
    files = source_files(data)
    corpus_hash = files_hash(files) if files else None
    recipe_key = stable_hash({
        "format": FORMAT_VERSION,
        "data": data.model_dump(mode="json", exclude={"dir"}),
        "tokenizer": settings.model_dump(mode="json"),
        "corpus_hash": corpus_hash,
    })
    target = Path(data.dir)
    if target.is_file() or (target.is_dir() and any(target.iterdir()) and read_meta(target) is None):
        raise ParamsError(f"study.data.dir: {target} exists and is not a prepared data folder; name a new folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    with locked(target.parent / f".{target.name}.lock"):
        meta = read_meta(target)
        if meta and meta["recipe"] == recipe_key:
            return meta["identity"]
        for stale in target.parent.glob(f".{target.name}.tmp-*"):
            shutil.rmtree(stale)
        building = target.parent / f".{target.name}.tmp-{os.getpid()}"
        building.mkdir()
        identity = build(params, files, building, recipe_key, corpus_hash)
        if target.exists():
            retired = target.parent / f".{target.name}.tmp-old-{os.getpid()}"
            target.rename(retired)
            building.rename(target)
            shutil.rmtree(retired)
        else:
            building.rename(target)
    return identity
