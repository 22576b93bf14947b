"""The chunked linear cross-entropy equals the reference (full logits, then cross_entropy), loss and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from optsweep.params.sections import Scale
from optsweep.train import loss as loss_module
from optsweep.train.loss import linear_cross_entropy
from optsweep.train.model import build_hf_model, build_model


def inputs(rows: int = 3, cols: int = 13, width: int = 16, vocab: int = 200) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(rows, cols, width, generator=generator, requires_grad=True)
    weight = (torch.randn(vocab, width, generator=generator) / width**0.5).requires_grad_()
    targets = torch.randint(0, vocab, (rows, cols), generator=generator)
    return hidden, weight, targets


def loss_and_grads(loss: torch.Tensor, *leaves: torch.Tensor) -> list[torch.Tensor]:
    return [loss.detach(), *torch.autograd.grad(loss, leaves)]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("chunk_tokens", [loss_module.CHUNK_TOKENS, 8], ids=["one-chunk", "uneven-chunks"])
def test_equals_the_reference_in_fp32(reduction, chunk_tokens, monkeypatch):
    monkeypatch.setattr(loss_module, "CHUNK_TOKENS", chunk_tokens)  # 39 rows: chunks of 8, the last of 7
    hidden, weight, targets = inputs()
    ours = loss_and_grads(linear_cross_entropy(hidden, weight, targets, reduction), hidden, weight)
    logits = hidden @ weight.T
    reference = loss_and_grads(F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction=reduction),
                               hidden, weight)
    assert ours[0].dtype == torch.float32
    tokens = targets.numel() if reduction == "sum" else 1  # 1e-5 per token
    torch.testing.assert_close(ours[0], reference[0], rtol=0, atol=1e-5 * tokens)
    for got, expected in zip(ours[1:], reference[1:]):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_bf16_evaluation_sums_in_fp32():
    """Without gradients the per-token losses are summed in fp32: a bf16 total (spacing 256 near 33,000)
    would be off by up to 0.4%."""
    generator = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(8, 512, 64, generator=generator), torch.randn(2048, 64, generator=generator) / 8
    targets = torch.randint(0, 2048, (8, 512), generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        ours = linear_cross_entropy(hidden, weight, targets, reduction="sum")
        reference = F.cross_entropy(F.linear(hidden, weight).float().flatten(0, 1), targets.flatten(), reduction="sum")
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, reference, rtol=6e-5, atol=0)


def test_bf16_autocast_is_close_to_bf16_logits_and_returns_fp32():
    hidden, weight, targets = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = linear_cross_entropy(hidden, weight, targets)
        logits = F.linear(hidden, weight)  # bf16 under autocast
    reference = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
    assert logits.dtype == torch.bfloat16 and ours.dtype == torch.float32
    torch.testing.assert_close(ours, reference, rtol=0, atol=2e-2)
    grad_hidden, grad_weight = torch.autograd.grad(ours, (hidden, weight))
    assert grad_hidden.dtype == grad_weight.dtype == torch.float32  # gradients reach the fp32 leaves


def test_model_loss_equals_the_stock_model_loss():
    """The trainer's forward (targets given) against stock transformers' logits and cross_entropy."""
    scale = Scale(width=32, depth=2, heads=2, seq_len=16, batch_size=2, tokens=64).derived(vocab_size=100)
    batch = torch.randint(0, 100, (2, 17), generator=torch.Generator().manual_seed(1))
    ours, stock = build_model(scale, seed=0), build_hf_model(scale, seed=0)
    loss = ours(batch[:, :-1], targets=batch[:, 1:], reduction="sum")
    logits = stock(input_ids=batch[:, :-1]).logits
    reference = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="sum")
    torch.testing.assert_close(loss, reference, rtol=0, atol=1e-5 * batch[:, 1:].numel())
    loss.backward()
    reference.backward()
    for (name, param), expected in zip(ours.named_parameters(), stock.parameters()):
        torch.testing.assert_close(param.grad, expected.grad, rtol=1e-4, atol=1e-6, msg=name)
