"""Token shards: documents encoded in batches (one thread per process, several processes for a large corpus),
written to memory-mapped shards with checkpoints, so that an interrupted preparation resumes."""

from __future__ import annotations

import collections
import functools
import hashlib
import itertools
import json
import multiprocessing
import os
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from ..params.settings import ParamsError
from ..params.study import DataSettings
from .corpus import documents, held_out_flags

if TYPE_CHECKING:
    from datasets import IterableDataset

# datasets, tokenizers, transformers and torch are imported where they are used: checking that prepared data
# is up to date (every pipeline stage does) then costs milliseconds instead of seconds of imports.

ENCODE_BATCH = 256  # documents per tokenizer call
CHECKPOINT_BATCHES = 64  # batches between checkpoints of an interruptible preparation
# Tokens per tokenizing process by default. One process already tokenizes on every core (the Rust tokenizer's
# thread pool); more pay only when reading and converting documents in Python is the bottleneck. A spawned
# process costs seconds of imports and finishes up to two batches nobody needs: for the tests' 120k-token
# corpus, two processes took 106 s and one 23 s on the (busy) 2-core box.
TOKENS_PER_PROCESS = 50_000_000


class ShardWriter:
    """Appends token ids to a flat binary file up to a budget; reopened after an interruption, it truncates the
    file to the last checkpoint and appends from there."""

    def __init__(self, path: Path, budget: int, dtype: np.dtype, written: int = 0) -> None:
        self.path, self.budget, self.dtype, self.written = path, budget, dtype, written
        self.file = path.open("r+b" if written else "wb")
        self.file.truncate(written * dtype.itemsize)
        self.file.seek(written * dtype.itemsize)

    @property
    def full(self) -> bool:
        return self.written >= self.budget

    def write(self, ids: np.ndarray) -> None:
        chunk = ids[: self.budget - self.written].astype(self.dtype)
        self.file.write(chunk.tobytes())
        self.written += len(chunk)

    def sync(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


def file_digest(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 24), b""):
            digest.update(block)
    return digest.digest()


@functools.lru_cache(maxsize=2)
def _rust_tokenizer(tokenizer_file: str) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(tokenizer_file)


@dataclass(frozen=True)
class DocumentEncoder:
    """Documents -> token ids, each followed by the end-of-text token, with one batched call of the Rust
    tokenizer (what a transformers fast tokenizer calls). Loaded once per process from `tokenizer.json`, so a
    pool's processes each hold their own, without importing transformers."""

    tokenizer_file: str
    eos_id: int

    def __call__(self, texts: list[str]) -> list[np.ndarray]:
        encodings = _rust_tokenizer(self.tokenizer_file).encode_batch(texts, add_special_tokens=False)
        return [np.asarray(encoding.ids + [self.eos_id], dtype=np.uint32) for encoding in encodings]


def _one_thread_per_process() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism; no nested thread pools


@dataclass(frozen=True)
class TextBatch:
    """`ENCODE_BATCH` documents with their held-out flags, and the corpus stream's state right after them."""

    documents: list[tuple[bool, str]]
    stream_state: dict[str, Any]

    @property
    def texts(self) -> list[str]:
        return [text for _, text in self.documents]


def encoded_batches(
    batches: Iterator[TextBatch], encode: DocumentEncoder, processes: int
) -> Iterator[tuple[TextBatch, list[np.ndarray]]]:
    """Each batch with its token ids, in corpus order. With several processes, each works on up to two
    batches ahead of the writer (never the whole corpus: reading stops once the shards are full). One process
    tokenizes in the Rust tokenizer's own thread pool."""
    if processes <= 1:
        for batch in batches:
            yield batch, encode(batch.texts)
        return
    context = multiprocessing.get_context("spawn")  # never fork a process whose tokenizer threads are running
    pool = context.Pool(processes, _one_thread_per_process)
    pending: collections.deque[tuple[TextBatch, Any]] = collections.deque()
    try:
        for batch in batches:
            pending.append((batch, pool.apply_async(encode, (batch.texts,))))
            if len(pending) > 2 * processes:
                batch, encoded = pending.popleft()
                yield batch, encoded.get()
        while pending:
            batch, encoded = pending.popleft()
            yield batch, encoded.get()
    finally:
        # Shut down by letting the few batches in flight finish, never by `terminate`: it kills the workers
        # while the pool's feeder thread may be half-way through sending a batch larger than the pipe
        # buffer, and then waits for that thread for ever (seen in CI when the writer stopped early).
        for _, encoded in pending:
            encoded.wait()
        pool.close()
        pool.join()


@dataclass
class ShardProgress:
    """How far `write_shards` got: saved at each checkpoint, so an interrupted preparation resumes there."""

    val_tokens: int = 0
    train_tokens: int = 0
    chars: int = 0  # characters of the documents written (the held-out prefix is measured in them)
    stream_state: dict[str, Any] | None = None  # the corpus stream's state after them; None: at its start

    @classmethod
    def load(cls, path: Path) -> ShardProgress:
        return cls(**json.loads(path.read_text())) if path.exists() else cls()

    def save(self, path: Path) -> None:
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(asdict(self)))
        partial.rename(path)


def text_batches(rows: IterableDataset, data: DataSettings, chars_before: int) -> Iterator[TextBatch]:
    """The stream's documents (after the `chars_before` characters already written) in batches."""
    flagged = held_out_flags(documents(rows, data), data.val_tokens, chars_before)
    while batch := list(itertools.islice(flagged, ENCODE_BATCH)):
        yield TextBatch(batch, rows.state_dict())  # taken right after the batch's last row, before any further


def write_shards(
    rows: IterableDataset, encode: DocumentEncoder, folder: Path, data: DataSettings, dtype: np.dtype, processes: int
) -> dict[str, Any]:
    """Tokenize the corpus stream's documents in order: the held-out prefix into val.bin (cut at its budget,
    the surplus dropped), every later document into train.bin. Stops reading the corpus once train.bin is full.

    Batches of `ENCODE_BATCH` documents are tokenized by `processes` processes. Every `CHECKPOINT_BATCHES`
    batches the shards are synced and the progress saved, with the stream's state after the last batch
    written; a rerun continues the stream from that state (reading again only the part of the file it was in).
    """
    progress_path = folder / "shards.json"
    progress = ShardProgress.load(progress_path)
    if progress.stream_state is not None:
        rows.load_state_dict(progress.stream_state)
    val = ShardWriter(folder / "val.bin", data.val_tokens, dtype, progress.val_tokens)
    train = ShardWriter(folder / "train.bin", data.train_tokens, dtype, progress.train_tokens)
    with closing(encoded_batches(text_batches(rows, data, progress.chars), encode, processes)) as encoded:
        for done, (batch, ids) in enumerate(encoded, start=1):
            for (held_out, _), document in zip(batch.documents, ids):
                (val if held_out else train).write(document)
            progress.chars += sum(len(text) for text in batch.texts)
            progress.stream_state = batch.stream_state
            if train.full or done % CHECKPOINT_BATCHES == 0:
                val.sync(), train.sync()
                progress.val_tokens, progress.train_tokens = val.written, train.written
                progress.save(progress_path)
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
    progress_path.unlink(missing_ok=True)
    return {
        "train_tokens": train.written,
        "val_tokens": val.written,
        "shards_hash": hashlib.sha256(file_digest(val.path) + file_digest(train.path)).hexdigest()[:16],
    }
