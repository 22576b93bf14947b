"""Muon as the paper ran it: torch.optim.Muon on the hidden matrices, AdamW on the rest at `muon_to_adam_lr` x lr,
stepping as one optimizer under a linear schedule with no warmup and a `decay` fraction (best 0.8), the
gradient clip bounding the AdamW branch only, and Levanter's 10 Newton-Schulz steps."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import (
    AT_LEAST_ONE,
    DECAY_RATE,
    POSITIVE,
    BuildContext,
    Hparam,
    Schedule,
    beta_hparam,
    declare_optimizer,
    hidden_matrices,
    lr_hparam,
    weight_decay_hparam,
)

if TYPE_CHECKING:
    import torch


@declare_optimizer(
    name="muon",
    hparams=[
        lr_hparam(0.02),
        Hparam("momentum", 0.95, DECAY_RATE, "log1m", help="Muon's Nesterov momentum"),
        weight_decay_hparam(0.1),
        Hparam("muon_to_adam_lr", 0.2, POSITIVE, "linear",
               help="lr of the AdamW part (embedding, head, norms), as a fraction of lr"),
        beta_hparam("beta1", 0.9),
        beta_hparam("beta2", 0.95),
        Hparam("ns_steps", 10, AT_LEAST_ONE, "linear", integer=True, help="Newton-Schulz iterations"),
    ],
    libraries=["torch"],
    schedule=Schedule("linear", decay=0.8),
)
def build_muon(model: torch.nn.Module, hparams: dict[str, Any], context: BuildContext) -> torch.optim.Optimizer:
    """torch.optim.Muon on the hidden matrices, AdamW (same weight decay, eps 1e-8) on everything else; the
    schedule scales both parts' lrs alike, so their ratio holds (and moves with `lr_transfer`)."""
    import torch

    from .parts import JointOptimizer, param_groups

    matrices = hidden_matrices(model)
    muon = torch.optim.Muon(
        matrices,
        lr=hparams["lr"],
        weight_decay=hparams["weight_decay"],
        momentum=hparams["momentum"],
        ns_steps=hparams["ns_steps"],
    )
    rest = param_groups(model, hparams["weight_decay"], context.decay_exclude, skip={id(p) for p in matrices})
    adam = torch.optim.AdamW(
        rest,
        lr=hparams["muon_to_adam_lr"] * hparams["lr"],
        betas=(hparams["beta1"], hparams["beta2"]),
        eps=1e-8,
        fused=context.fused,
    )
    return JointOptimizer([muon, adam], clipped=[adam])
