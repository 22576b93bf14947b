"""Scion (Levanter's unconstrained form, the paper's): orthogonalised EMA momentum without Nesterov on the hidden
matrices (torch.optim.Muon), and Signum (sign of an EMA momentum) on the rest at `scion_to_signum_lr` x lr; under
the paper's linear schedule with no warmup and a `decay` fraction, the gradient clip bounding the Signum branch
only."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .base import (
    AT_LEAST_ONE,
    DECAY_RATE,
    EPS,
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
    name="scion",
    # The paper's best at 130M / 1x Chinchilla (lr 1.6e-2, momentum 0.95, beta1 0.95, wd 0.1, ratio 0.2);
    # eps is its baseline scion_epsilon, ns_steps Levanter's backend_steps of the paper's runs, decay its best
    # (0.8; the grid's baseline is 0.4).
    hparams=[
        lr_hparam(1.6e-2),
        Hparam("momentum", 0.95, DECAY_RATE, "log1m", help="EMA momentum of the matrix part (no Nesterov)"),
        weight_decay_hparam(0.1),
        Hparam("scion_to_signum_lr", 0.2, POSITIVE, "linear", help="lr of the Signum part, as a fraction of lr"),
        beta_hparam("beta1", 0.95),
        replace(EPS, default=1e-15, help="Newton-Schulz normalisation (the paper's scion_epsilon)"),
        Hparam("ns_steps", 10, AT_LEAST_ONE, "linear", integer=True, help="Newton-Schulz iterations"),
    ],
    libraries=["torch", "pytorch-optimizer"],
    schedule=Schedule("linear", decay=0.8),
)
def build_scion(model: torch.nn.Module, hparams: dict[str, Any], context: BuildContext) -> torch.optim.Optimizer:
    """torch.optim.Muon(nesterov=False) on the hidden matrices; Lion with beta1 = beta2 (Signum) elsewhere."""
    import pytorch_optimizer
    import torch

    from .parts import JointOptimizer, param_groups

    matrices = hidden_matrices(model)
    orthogonalised = torch.optim.Muon(
        matrices,
        lr=hparams["lr"],
        weight_decay=hparams["weight_decay"],
        momentum=hparams["momentum"],
        nesterov=False,
        ns_steps=hparams["ns_steps"],
        eps=hparams["eps"],
    )
    rest = param_groups(model, hparams["weight_decay"], context.decay_exclude, skip={id(p) for p in matrices})
    # Lion's update is sign(beta1 m + (1 - beta1) g) with m <- beta2 m + (1 - beta2) g: at beta2 = beta1 it
    # is the sign of the new EMA momentum, Signum. The schedule scales both parts, so the ratio holds.
    signum = pytorch_optimizer.Lion(
        rest,
        lr=hparams["scion_to_signum_lr"] * hparams["lr"],
        betas=(hparams["beta1"], hparams["beta1"]),
        weight_decouple=True,
    )
    return JointOptimizer([orthogonalised, signum], clipped=[signum])
