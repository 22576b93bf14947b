"""MARS (variance-reduced AdamW) from pytorch-optimizer, the paper's MARS-AdamW.

Clipping. MARS clips its corrected gradient c = g + gamma * beta1 / (1 - beta1) * (g - g_prev) itself:
pytorch-optimizer to norm 1 per tensor, the paper (Levanter) by the global norm to `max_grad_norm` (1), and
no library clips by the global norm. The paper does not clip g. The shared `clip` acts on g before the
optimizer sees it: at `clip: 0` (the paper's setting) only MARS's own per-tensor clip of c remains; at
`clip > 0` g is clipped globally first, so c (and the g_prev kept for the next step) are built from the
clipped gradient, a second clip the paper does not have.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .base import EPS, POSITIVE, BuildContext, Hparam, beta_hparam, declare_optimizer, lr_hparam, weight_decay_hparam

if TYPE_CHECKING:
    import torch


@declare_optimizer(
    name="mars",
    # The paper's best at 130M / 1x Chinchilla (lr 1.6e-2, beta 0.9/0.95, gamma 0.025, wd 0.1, eps 1e-25).
    hparams=[
        lr_hparam(1.6e-2),
        beta_hparam("beta1", 0.9),
        beta_hparam("beta2", 0.95),
        Hparam("gamma", 0.025, POSITIVE, "log", help="weight of the gradient-difference correction"),
        weight_decay_hparam(0.1),
        replace(EPS, default=1e-25),
    ],
    libraries=["pytorch-optimizer"],
)
def build_mars(model: torch.nn.Module, hparams: dict[str, Any], context: BuildContext) -> torch.optim.Optimizer:
    """pytorch_optimizer.MARS (AdamW type) on every parameter, over the weight-decay groups."""
    import pytorch_optimizer

    from .parts import param_groups

    return pytorch_optimizer.MARS(
        param_groups(model, hparams["weight_decay"], context.decay_exclude),
        lr=hparams["lr"],
        betas=(hparams["beta1"], hparams["beta2"]),
        gamma=hparams["gamma"],
        mars_type="adamw",
        # The paper applies MARS to every parameter. The library's default sends 1-D ones to a plain AdamW at
        # its own lr_1d and weight_decay_1d (0.1, which would decay the norms).
        optimize_1d=True,
        eps=hparams["eps"],
        weight_decouple=True,
    )
