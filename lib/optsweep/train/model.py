"""The model of a scale: a Llama-2 `LlamaForCausalLM` from transformers, and its parameter counts.

Llama-2 as published: RMSNorm, rotary position embeddings, a SwiGLU MLP, no biases, multi-head attention
(as many key/value heads as query heads) and an output head that is not tied to the input embedding.

Two changes for speed, neither of which changes the function the model computes:
- attention is SDPA with `is_causal=True` and no mask, in eager and compiled mode alike (`CAUSAL_ATTENTION`);
- given `targets`, the forward returns the next-token loss computed from the hidden states in chunks
  (`loss.linear_cross_entropy`) instead of the full logits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import AttentionInterface, LlamaConfig, LlamaForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from .loss import linear_cross_entropy

# Padding the embedding and output head to a multiple of 64 rows keeps their matmuls on fast GPU kernels.
# The extra rows are never a target, so training pushes their logits down; the loss is otherwise unchanged.
VOCAB_MULTIPLE = 64


# Our batches are windows cut from one token stream: no padding, one causal sequence per row. transformers'
# "sdpa" knows that in eager mode, but under torch.compile its packed-sequence check cannot read the position
# ids, so it builds a 4-D boolean mask and calls SDPA with `attn_mask=mask, is_causal=False`, which rules out
# the flash kernel. An attention implementation that transformers has no mask function for gets no mask at
# all (`masking_utils.create_causal_mask` returns None early), so this one always calls SDPA causally.
CAUSAL_ATTENTION = "sdpa_causal"


def causal_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention with `is_causal=True` and no mask (packed windows, no padding)."""
    kwargs.pop("is_causal", None)
    return sdpa_attention_forward(module, query, key, value, None, is_causal=True, **kwargs)


AttentionInterface.register(CAUSAL_ATTENTION, causal_sdpa_attention)


class ChunkedLossLlamaForCausalLM(LlamaForCausalLM):
    """`LlamaForCausalLM` whose forward returns the next-token loss, not logits, when given `targets`.

    Compiling the model (`model.compile()`) therefore compiles the loss with it. Without `targets` this is
    the stock forward. A padding mask is refused: `CAUSAL_ATTENTION` would drop it without a word.
    """

    def forward(
        self, input_ids: torch.Tensor, targets: torch.Tensor | None = None, reduction: str = "mean", **kwargs: Any
    ) -> Any:
        if kwargs.get("attention_mask") is not None:
            raise ValueError(f"attention {CAUSAL_ATTENTION!r} takes no attention_mask: rows are packed windows")
        if targets is None:
            return super().forward(input_ids=input_ids, **kwargs)
        hidden = self.model(input_ids=input_ids, **kwargs).last_hidden_state
        return linear_cross_entropy(hidden, self.lm_head.weight, targets, reduction)


def padded_vocab(vocab_size: int) -> int:
    return -(-vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def llama_config(scale: dict[str, Any], attention: str = CAUSAL_ATTENTION) -> LlamaConfig:
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
        attn_implementation=attention,
    )


def _seeded(seed: int, build: Callable[[], LlamaForCausalLM]) -> LlamaForCausalLM:
    """Built on the CPU under `seed`, so the init is the same on every device."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def build_model(scale: dict[str, Any], seed: int) -> ChunkedLossLlamaForCausalLM:
    """A freshly initialised model, as the trainer uses it: causal SDPA, chunked loss."""
    return _seeded(seed, lambda: ChunkedLossLlamaForCausalLM(llama_config(scale)))


def build_hf_model(scale: dict[str, Any], seed: int) -> LlamaForCausalLM:
    """The same model (same weights for the same seed) as stock transformers builds it: `sdpa`, full logits."""
    return _seeded(seed, lambda: LlamaForCausalLM(llama_config(scale, attention="sdpa")))


def is_embedding(name: str) -> bool:
    """The input embedding and the output head: the parameters that scale with the vocabulary."""
    return name.startswith(("model.embed_tokens.", "lm_head."))


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(non-embedding parameters N, total parameters); N matches `Scale.n_params`."""
    total = sum(p.numel() for p in model.parameters())
    embedding = sum(p.numel() for name, p in model.named_parameters() if is_embedding(name))
    return total - embedding, total
