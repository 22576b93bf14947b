"""The study's AdamW, as a plug-in: torch's AdamW over the weight-decay groups (optsweep.optimizers.parts.adamw)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import EPS, BuildContext, beta_hparam, declare_optimizer, lr_hparam, weight_decay_hparam

if TYPE_CHECKING:
    import torch


@declare_optimizer(
    name="adamw",
    hparams=[lr_hparam(1e-3), beta_hparam("beta1", 0.9), beta_hparam("beta2", 0.95), weight_decay_hparam(0.1), EPS],
    libraries=["torch"],
)
def build_adamw(model: torch.nn.Module, hparams: dict[str, Any], context: BuildContext) -> torch.optim.Optimizer:
    """The study's AdamW (optsweep.optimizers.parts.adamw), bit for bit."""
    from .parts import adamw

    return adamw(model, hparams, context.decay_exclude, context.fused)
