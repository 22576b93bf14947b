"""Prepared data: a corpus tokenized once into token shards with a held-out split, and the batches a run reads.

    corpus   where the text comes from (files or the hub, in a seeded order), its held-out prefix, the tokenizer
    shards   documents encoded in batches and written to memory-mapped shards, with checkpoints
    prepare  the recipe and its identity, building a prepared folder once (locked, resumable)
    batches  the training batches in a seeded order, and the held-out batches
"""

from .prepare import ensure_prepared, read_meta

__all__ = ["ensure_prepared", "read_meta"]
