"""optsweep: near-optimal AdamW hyperparameters for Llama-2-style pretraining, and which ones depend on scale."""

__version__ = "0.1.0"
