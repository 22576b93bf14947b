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

import collections
import fcntl
import functools
import glob
import hashlib
import inspect
import itertools
import json
import multiprocessing
import os
import re
import shutil
import sys
import sysconfig
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from ..codehash import normalised_code
from ..params.settings import ParamsError, StudyParams
from ..params.study import DataSettings, TokenizerSettings
from ..provenance import stable_hash

if TYPE_CHECKING:
    from datasets import IterableDataset
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

# datasets, tokenizers, transformers and torch are imported where they are used: checking that prepared data
# is up to date (every pipeline stage does) then costs milliseconds instead of seconds of imports.

# Bump when the shard format changes, or the recipe in code outside `RECIPE_CODE`, so old folders are rebuilt.
FORMAT_VERSION = 3
END_OF_TEXT = "<|endoftext|>"
ENCODE_BATCH = 256  # documents per tokenizer call
CHECKPOINT_BATCHES = 64  # batches between checkpoints of an interruptible preparation
# Tokens per tokenizing process by default. One process already tokenizes on every core (the Rust tokenizer's
# thread pool); more pay only when reading and converting documents in Python is the bottleneck. A spawned
# process costs seconds of imports and finishes up to two batches nobody needs: for the tests' 120k-token
# corpus, two processes took 106 s and one 23 s on the (busy) 2-core box.
TOKENS_PER_PROCESS = 50_000_000
# The held-out prefix is measured in characters because it must be fixed before a tokenizer exists. BPE
# tokenizers compress text to 2-5 characters per token, so 8 fills the validation shard with room to spare
# (a build that falls short says so); the prefix's surplus documents are dropped, never trained on.
HELD_OUT_CHARS_PER_TOKEN = 8
COMMIT = re.compile(r"[0-9a-f]{40}")  # a hub repository's commit hash


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


def corpus_rows(data: DataSettings, files: list[Path]) -> IterableDataset:
    """The corpus as a `datasets` stream of rows in the order fixed by `data.seed` (nothing is cached). Its
    `state_dict()` after any row is where a stream opened again with `load_state_dict` continues."""
    import datasets

    if data.source == "hub":
        rows = datasets.load_dataset(
            data.hub_dataset, data.hub_config, split=data.hub_split, streaming=True, revision=data.hub_revision)
        # The hub's files (its shards) in an order fixed by the seed, read one after the other. Not datasets'
        # `shuffle`: it reads every file at once, interleaved, and keeps a buffer that a saved state lacks, so
        # a resumed preparation would read every file again and lose the buffer's documents.
        order = np.random.default_rng(data.seed).permutation(rows.num_shards)
        return datasets.concatenate_datasets([rows.shard(rows.num_shards, int(shard)) for shard in order])
    order = np.random.default_rng(data.seed).permutation(len(files))
    return datasets.load_dataset(
        "text", data_files=[str(files[i]) for i in order], sample_by="document",
        keep_linebreaks=True, encoding_errors="replace", split="train", streaming=True,
    )


def documents(rows: IterableDataset, data: DataSettings) -> Iterator[str]:
    """The non-empty texts of a corpus stream's rows."""
    column = data.text_column if data.source == "hub" else "text"
    for row in rows:
        if column not in row:
            raise ParamsError(f"study.data.text_column: no column {column!r}; the rows have {', '.join(row)}")
        if row[column]:
            yield row[column]


def corpus_texts(data: DataSettings, files: list[Path]) -> Iterator[str]:
    """Documents in the order fixed by `data.seed`, from the start of the corpus."""
    return documents(corpus_rows(data, files), data)


def held_out_flags(texts: Iterator[str], val_tokens: int, seen: int = 0) -> Iterator[tuple[bool, str]]:
    """Each document with whether it belongs to the held-out prefix (`HELD_OUT_CHARS_PER_TOKEN` x val_tokens);
    `seen`: the characters of the documents before these (a resumed stream)."""
    budget = HELD_OUT_CHARS_PER_TOKEN * val_tokens
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

        tokenizer = AutoTokenizer.from_pretrained(settings.name, revision=settings.revision)
        if tokenizer.eos_token_id is None:
            raise ParamsError(f"study.tokenizer.name: {settings.name!r} has no end-of-text token to separate documents")
        return tokenizer
    return train_bpe(after_held_out(corpus_texts(data, files), data.val_tokens), settings)


def tokenizer_label(settings: TokenizerSettings) -> str:
    return settings.name if settings.kind == "pretrained" else f"bpe-{settings.vocab_size}"


# --- shards ---------------------------------------------------------------------------------------------------


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
