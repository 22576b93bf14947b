"""The model of a scale is Llama-2 as published, and its counts match the params' derived values."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from optsweep.params.sections import Scale
from optsweep.train.model import CAUSAL_ATTENTION, build_hf_model, build_model, count_params, padded_vocab

SCALES = [
    Scale(width=32, depth=1, heads=2, seq_len=16, batch_size=2, tokens=64),
    Scale(width=64, depth=2, heads=4, ffn_width=96, seq_len=16, batch_size=2, tokens=64),
]


@pytest.mark.parametrize("scale", SCALES, ids=["default-ffn", "custom-ffn"])
def test_parameter_counts_match_the_scale(scale: Scale):
    model = build_model(scale.derived(vocab_size=500), seed=0)
    n_params, total = count_params(model)
    assert n_params == scale.n_params
    assert total == scale.n_params + 2 * padded_vocab(500) * scale.width  # untied embedding and head


def test_llama2_architecture():
    scale = SCALES[1].derived(vocab_size=500)
    model = build_model(scale, seed=0)
    config = model.config
    assert config.vocab_size == 512 and padded_vocab(512) == 512 and padded_vocab(513) == 576
    assert config.intermediate_size == 96 and config.hidden_act == "silu"  # SwiGLU
    assert config.num_key_value_heads == config.num_attention_heads == 4  # multi-head, not grouped
    assert config._attn_implementation == CAUSAL_ATTENTION
    assert not any(name.endswith("bias") for name, _ in model.named_parameters())
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    norms = [m for m in model.modules() if isinstance(m, LlamaRMSNorm)]
    assert len(norms) == 2 * scale["depth"] + 1


def test_init_depends_only_on_the_seed():
    scale = SCALES[0].derived(vocab_size=500)
    first, again, other = (build_model(scale, seed=s).state_dict() for s in (3, 3, 4))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["lm_head.weight"], other["lm_head.weight"])


def test_the_stock_model_has_the_same_init():
    """`optsweep bench` compares against stock transformers on equal weights."""
    scale = SCALES[1].derived(vocab_size=500)
    ours, stock = build_model(scale, seed=3).state_dict(), build_hf_model(scale, seed=3).state_dict()
    assert ours.keys() == stock.keys() and all(torch.equal(ours[k], stock[k]) for k in ours)
