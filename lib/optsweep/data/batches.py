"""Reading prepared data for training: the memory-mapped shards, the seeded batch order, the held-out windows.

This is training code (it decides which tokens a run sees at which step), so it is part of the default
trainer's code identity; how the shards were built is covered by the data hash instead (see data.py).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .prepare import read_meta

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Shards:
    train: np.memmap
    val: np.memmap
    tokenizer: PreTrainedTokenizerBase


@functools.lru_cache(maxsize=4)
def _open_shards(folder: str, data_hash: str) -> Shards:
    meta = read_meta(Path(folder))
    if meta is None or meta["identity"]["hash"] != data_hash:
        found = meta["identity"]["hash"] if meta else "nothing"
        raise ValueError(f"{folder}: holds data {found}, the run expects {data_hash}; run `optsweep prepare`")
    from transformers import AutoTokenizer

    dtype = np.dtype(meta["identity"]["dtype"])
    return Shards(
        train=np.memmap(Path(folder) / "train.bin", dtype=dtype, mode="r"),
        val=np.memmap(Path(folder) / "val.bin", dtype=dtype, mode="r"),
        tokenizer=AutoTokenizer.from_pretrained(Path(folder) / "tokenizer"),
    )


def load_shards(identity: dict[str, Any]) -> Shards:
    """The memory-mapped shards and tokenizer of a data identity (opened once per process)."""
    return _open_shards(identity["dir"], identity["hash"])


class TrainBatches:
    """Training batches in an order fixed by the data seed, the same for every config of a sweep.

    The training shard is cut into windows of `seq_len + 1` tokens (inputs and next-token targets) that
    overlap by one token. Each epoch visits every window once in a seeded permutation; batch `step` takes
    the next `batch_size` windows of that stream, so a different batch size regroups the same stream.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int) -> None:
        self.tokens, self.batch_size, self.seq_len, self.seed = tokens, batch_size, seq_len, seed
        self.n_windows = (len(tokens) - 1) // seq_len
        if self.n_windows < 1:
            raise ValueError(f"the training shard ({len(tokens)} tokens) is shorter than one window ({seq_len + 1})")
        self._epoch_order: tuple[int, np.ndarray] | None = None

    def window_order(self, epoch: int) -> np.ndarray:
        if self._epoch_order is None or self._epoch_order[0] != epoch:
            self._epoch_order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n_windows))
        return self._epoch_order[1]

    def window_starts(self, step: int) -> np.ndarray:
        """Token offsets of the windows of batch `step`."""
        positions = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
        epochs, offsets = np.divmod(positions, self.n_windows)
        windows = np.concatenate([self.window_order(e)[offsets[epochs == e]] for e in np.unique(epochs)])
        return windows * self.seq_len

    def batch(self, step: int) -> torch.Tensor:
        """Batch `step` as a (batch_size, seq_len + 1) int64 CPU tensor."""
        import torch

        rows = np.stack([self.tokens[s : s + self.seq_len + 1] for s in self.window_starts(step)])
        return torch.from_numpy(rows.astype(np.int64))


def val_batches(
    tokens: np.ndarray, batch_size: int, seq_len: int, max_tokens: int | None = None
) -> list[torch.Tensor]:
    """The held-out tokens (the first `max_tokens`, default all) as windows in fixed order, batched."""
    import torch

    usable = len(tokens) if max_tokens is None else min(len(tokens), max_tokens + 1)
    n_windows = (usable - 1) // seq_len
    if n_windows < 1:
        raise ValueError(f"the validation shard ({len(tokens)} tokens) is shorter than one window ({seq_len + 1})")
    rows = np.stack([tokens[i * seq_len : i * seq_len + seq_len + 1] for i in range(n_windows)])
    return list(torch.from_numpy(rows.astype(np.int64)).split(batch_size))
