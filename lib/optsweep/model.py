"""The model of a scale: a Llama-2 `LlamaForCausalLM` from transformers, and its parameter counts.

Llama-2 as published: RMSNorm, rotary position embeddings, a SwiGLU MLP, no biases, multi-head attention
(as many key/value heads as query heads) and an output head that is not tied to the input embedding.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

# Padding the embedding and output head to a multiple of 64 rows keeps their matmuls on fast GPU kernels.
# The extra rows are never a target, so training pushes their logits down; the loss is otherwise unchanged.
VOCAB_MULTIPLE = 64


def padded_vocab(vocab_size: int) -> int:
    return -(-vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def llama_config(scale: dict[str, Any]) -> LlamaConfig:
    """The transformers config for a scale as a run spec carries it (`Scale.derived`)."""
    return LlamaConfig(
        vocab_size=padded_vocab(scale["vocab_size"]),
        hidden_size=scale["width"],
        intermediate_size=scale["ffn_width"],
        num_hidden_layers=scale["depth"],
        num_attention_heads=scale["heads"],
        num_key_value_heads=scale["heads"],
        max_position_embeddings=scale["seq_len"],
        hidden_act="silu",
        rms_norm_eps=1e-5,
        initializer_range=0.02,
        rope_parameters={"rope_type": "default", "rope_theta": 10_000.0},
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=False,
        use_cache=False,
        attn_implementation="sdpa",
    )


def build_model(scale: dict[str, Any], seed: int) -> LlamaForCausalLM:
    """A freshly initialised model. Built on the CPU under `seed`, so the init is the same on every device."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(llama_config(scale))


def is_embedding(name: str) -> bool:
    """The input embedding and the output head: the parameters that scale with the vocabulary."""
    return name.startswith(("model.embed_tokens.", "lm_head."))


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(non-embedding parameters N, total parameters); N matches `Scale.n_params`."""
    total = sum(p.numel() for p in model.parameters())
    embedding = sum(p.numel() for name, p in model.named_parameters() if is_embedding(name))
    return total - embedding, total
