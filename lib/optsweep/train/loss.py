"""Next-token cross-entropy straight from the final hidden states and the output head, never the full logits.

At the brief's 0.1B scale one micro-batch of 64 x 1024 tokens over a 32,000-token vocabulary has 2.1 G logits:
8.4 GB in fp32, read and written several times per step by `logits.float()` and `cross_entropy`. torch's
`linear_cross_entropy` with `LinearCrossEntropyOptions` instead multiplies the hidden states by the head's
weight `CHUNK_TOKENS` rows at a time and computes each chunk's gradients right away, so at most one chunk of
logits exists at any moment (forward or backward). It is a `torch.library` custom op, so a compiled model
keeps it in its graph as one opaque call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn import LinearCrossEntropyOptions

# Rows of logits per chunk: 8192 x 32,000 fp32 logits are 1 GB at the 0.1B scale, and a matmul of 8192 rows
# keeps a GPU busy. The tiny CPU scales (1,024 tokens per batch) fit in one chunk.
CHUNK_TOKENS = 8192


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """`cross_entropy(hidden @ weight.T, targets)`, in chunks of `CHUNK_TOKENS` rows; returns an fp32 scalar.

    `hidden` is (..., width), `weight` (vocab, width), `targets` (...) token ids; `reduction` "mean" or "sum".
    Under autocast the matmuls run in the autocast dtype (bf16) while softmax and the gradients accumulate in
    fp32, as an autocast `lm_head` followed by `logits.float()` would. The op returns its loss in the input
    dtype, so with gradients (training) the loss value is rounded to bf16 once (at most 0.4%; the gradients
    are not); without (evaluation) each token's loss is rounded instead and the sum is taken in fp32, exact
    enough for comparing configs 0.25% apart.
    """
    hidden, targets = hidden.flatten(0, -2), targets.flatten()
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    options = LinearCrossEntropyOptions(
        batch_chunk_size=CHUNK_TOKENS,
        chunking_method=None,
        acc_dtype=torch.float32,
        # torch.compile needs this and would switch it on with a warning; eager mode saves the extra buffer.
        allow_retain_graph=torch.compiler.is_compiling(),
    )
    training = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    with torch.autocast(device, enabled=False):  # the op picks its own dtypes per step
        if training:  # one pass computes the loss and, chunk by chunk, its gradients
            return F.linear_cross_entropy(hidden, weight, targets, reduction=reduction, options=options).float()
        losses = F.linear_cross_entropy(hidden, weight, targets, reduction="none", options=options).float()
    return losses.sum() if reduction == "sum" else losses.mean()
