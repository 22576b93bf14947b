"""NAdamW: torch's NAdam with decoupled weight decay and a constant Nesterov momentum, the paper's NAdamW."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .base import EPS, BuildContext, beta_hparam, declare_optimizer, lr_hparam, weight_decay_hparam

if TYPE_CHECKING:
    import torch

# torch's NAdam warms its momentum up as mu_t = beta1 * (1 - 0.5 * 0.96 ** (t * momentum_decay)); its default
# 4e-3 keeps mu_t near 0.5-0.9 beta1 for ~10k steps. The paper's NAdamW (optax `nesterov=True`) uses
# mu_t = beta1 at every step, which is this limit: 0.96 ** (t * 1e9) is 0 from the first step.
CONSTANT_MOMENTUM_DECAY = 1e9


@declare_optimizer(
    name="nadamw",
    # The paper's best at 130M / 1x Chinchilla (lr 8e-3, beta 0.95/0.98, wd 0.1, eps 1e-25).
    hparams=[
        lr_hparam(8e-3),
        beta_hparam("beta1", 0.95),
        beta_hparam("beta2", 0.98),
        weight_decay_hparam(0.1),
        replace(EPS, default=1e-25),
    ],
    libraries=["torch"],
)
def build_nadamw(model: torch.nn.Module, hparams: dict[str, Any], context: BuildContext) -> torch.optim.Optimizer:
    """torch.optim.NAdam over the weight-decay groups, decay decoupled (lr * wd, as AdamW), mu_t = beta1."""
    import torch

    from .parts import param_groups

    return torch.optim.NAdam(
        param_groups(model, hparams["weight_decay"], context.decay_exclude),
        lr=hparams["lr"],
        betas=(hparams["beta1"], hparams["beta2"]),
        eps=hparams["eps"],
        momentum_decay=CONSTANT_MOMENTUM_DECAY,
        decoupled_weight_decay=True,
    )
