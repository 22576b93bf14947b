"""The default trainer, `optsweep.train:train`: a Llama-2 model from transformers trained on prepared shards.

    model       the Llama-2 model and its loss on chunks of the vocabulary
    loss        the chunked linear cross-entropy
    divergence  when a run has blown up: one rule for runs and for tables
    loop        one run, end to end: build, train, checkpoint, evaluate on held-out data at the full budget
    bench       the throughput benchmark (`optsweep bench`); bench_suite, its suite of the brief's scales

Its code identity (optsweep.runs.trainer) covers model, loss, divergence and loop, with the batches and the
optimizers' shared parts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .loop import TRAINER_VERSION, Runtime, TrainingRun, configure_determinism, resolve_runtime, train

__all__ = ["TRAINER_VERSION", "Runtime", "TrainingRun", "configure_determinism", "resolve_runtime", "train"]


def __getattr__(name: str) -> Any:
    """The loop's names, imported on first use: the analysis reads `divergence` (the blown-up rule), and a
    notebook or report process must not pay for importing torch and transformers to get it."""
    if name in __all__:
        from . import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
