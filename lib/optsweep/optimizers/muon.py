"""Muon: torch.optim.Muon on the hidden matrices, AdamW on the rest, stepping as one optimizer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import (
    DECAY_RATE,
    POSITIVE,
    BuildContext,
    Hparam,
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
        Hparam("adam_lr", 3e-3, POSITIVE, "log", help="peak lr of the AdamW part (embedding, head, norms)"),
        beta_hparam("beta1", 0.9),
        beta_hparam("beta2", 0.95),
    ],
    libraries=["torch"],
)
def build_muon(model: torch.nn.Module, hparams: dict[str, Any], context: BuildContext) -> torch.optim.Optimizer:
    """torch.optim.Muon on the hidden matrices, AdamW (same weight decay, eps 1e-8) on everything else."""
    import torch

    from .parts import JointOptimizer, param_groups

    matrices = hidden_matrices(model)
    muon = torch.optim.Muon(
        matrices, lr=hparams["lr"], weight_decay=hparams["weight_decay"], momentum=hparams["momentum"]
    )
    rest = param_groups(model, hparams["weight_decay"], context.decay_exclude, skip={id(p) for p in matrices})
    adam = torch.optim.AdamW(
        rest, lr=hparams["adam_lr"], betas=(hparams["beta1"], hparams["beta2"]), eps=1e-8, fused=context.fused
    )
    return JointOptimizer([muon, adam])
