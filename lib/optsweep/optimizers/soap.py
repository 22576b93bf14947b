"""SOAP from pytorch-optimizer: Adam in the eigenbasis of a Shampoo preconditioner."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import (
    AT_LEAST_ONE,
    EPS,
    BuildContext,
    Hparam,
    beta_hparam,
    declare_optimizer,
    lr_hparam,
    weight_decay_hparam,
)

if TYPE_CHECKING:
    import torch


@declare_optimizer(
    name="soap",
    hparams=[
        lr_hparam(3e-3),
        beta_hparam("beta1", 0.95),
        beta_hparam("beta2", 0.95),
        beta_hparam("shampoo_beta", 0.95),
        weight_decay_hparam(0.01),
        EPS,
        Hparam("precondition_frequency", 10, AT_LEAST_ONE, "log", integer=True, help="steps between eigenbases"),
        Hparam(
            "max_precondition_dim", 1024, AT_LEAST_ONE, "log", integer=True,
            help="longer dimensions (e.g. the vocabulary) are not preconditioned",
        ),
    ],
    libraries=["pytorch-optimizer"],
)
def build_soap(model: torch.nn.Module, hparams: dict[str, Any], context: BuildContext) -> torch.optim.Optimizer:
    """pytorch-optimizer's SOAP: Adam in the eigenbasis of a Shampoo preconditioner, on every parameter."""
    import pytorch_optimizer

    from .parts import param_groups

    return pytorch_optimizer.SOAP(
        param_groups(model, hparams["weight_decay"], context.decay_exclude),
        lr=hparams["lr"],
        betas=(hparams["beta1"], hparams["beta2"]),
        shampoo_beta=hparams["shampoo_beta"],
        eps=hparams["eps"],
        precondition_frequency=hparams["precondition_frequency"],
        max_precondition_dim=hparams["max_precondition_dim"],
    )
