"""Prepared data: a corpus tokenized once into token shards with a held-out split, and the batches a run reads.

    prepare  the recipe (local files or the hub, a tokenizer), the shards, and their identity
    batches  the training batches in a seeded order, and the held-out batches
"""

from .prepare import ensure_prepared, read_meta

__all__ = ["ensure_prepared", "read_meta"]
