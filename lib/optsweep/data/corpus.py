"""Where the text comes from (local files or a hub dataset, read in a seeded order), its held-out prefix, and the
tokenizer (a byte-level BPE trained on the training text, or a pretrained one)."""

from __future__ import annotations

import glob
import hashlib
import os
import sysconfig
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from ..params.settings import ParamsError
from ..params.study import DataSettings, TokenizerSettings

if TYPE_CHECKING:
    from datasets import IterableDataset
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

# datasets, tokenizers, transformers and torch are imported where they are used: checking that prepared data
# is up to date (every pipeline stage does) then costs milliseconds instead of seconds of imports.

END_OF_TEXT = "<|endoftext|>"
# The held-out prefix is measured in characters because it must be fixed before a tokenizer exists. BPE
# tokenizers compress text to 2-5 characters per token, so 8 fills the validation shard with room to spare
# (a build that falls short says so); the prefix's surplus documents are dropped, never trained on.
HELD_OUT_CHARS_PER_TOKEN = 8


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
