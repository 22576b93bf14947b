"""Lion from pytorch-optimizer: the sign of an interpolated momentum, with decoupled weight decay."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import BuildContext, beta_hparam, declare_optimizer, lr_hparam, weight_decay_hparam

if TYPE_CHECKING:
    import torch


@declare_optimizer(
    name="lion",
    hparams=[lr_hparam(3e-4), beta_hparam("beta1", 0.9), beta_hparam("beta2", 0.99), weight_decay_hparam(0.1)],
    libraries=["pytorch-optimizer"],
)
def build_lion(model: torch.nn.Module, hparams: dict[str, Any], context: BuildContext) -> torch.optim.Optimizer:
    """pytorch-optimizer's Lion (sign of an interpolated momentum) with decoupled weight decay."""
    import pytorch_optimizer

    from .parts import param_groups

    return pytorch_optimizer.Lion(
        param_groups(model, hparams["weight_decay"], context.decay_exclude),
        lr=hparams["lr"],
        betas=(hparams["beta1"], hparams["beta2"]),
        weight_decouple=True,
    )
