"""Tokens/s of data preparation (tokenizing the corpus into shards) with 1 and with 2 processes.

    .venv/bin/python bench/prepare_speed.py [--tokens 3000000] [--processes 1 2]

The stdlib corpus and the default byte-level BPE (4096 tokens), trained once and not timed; then the same
`--tokens` training tokens are written with each process count, into a fresh folder each time. The time
covers reading the corpus, tokenizing and writing the shards (what scales with the 10-60B tokens of a study).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from optsweep.data.prepare import DocumentEncoder, corpus_texts, saved_tokenizer, source_files, write_shards
from optsweep.params.study import DataSettings, TokenizerSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=3_000_000)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    data = DataSettings(source="stdlib", train_tokens=args.tokens, val_tokens=50_000)
    files = source_files(data)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = Path(scratch) / "tokenizer"
        eos_id = saved_tokenizer(data, TokenizerSettings(train_chars=5_000_000), files, tokenizer).eos_token_id
        encode = DocumentEncoder(str(tokenizer / "tokenizer.json"), eos_id)
        for processes in args.processes:
            folder = Path(scratch) / f"shards-{processes}"
            folder.mkdir()
            started = time.perf_counter()
            written = write_shards(corpus_texts(data, files), encode, folder, data, np.dtype(np.uint16), processes)
            seconds = time.perf_counter() - started
            tokens = written["train_tokens"] + written["val_tokens"]
            print(f"{processes} process(es): {tokens:,} tokens in {seconds:.1f} s = {tokens / seconds:,.0f} tokens/s "
                  f"(shards {written['shards_hash']})", flush=True)


if __name__ == "__main__":
    main()
