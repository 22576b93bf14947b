"""Cautious AdamW (C-AdamW): heavyball's AdamW with `caution`, the paper's Cautious optimizer.

heavyball rather than pytorch-optimizer: pytorch-optimizer has no cautious AdamW (only cautious variants of
Lion, MARS, ADOPT, LaProp, ...), and its shared mask rescales by numel / (kept + 1), not Levanter's
`u * mask / mean(mask)` (cautious.py); heavyball's mask (update and gradient of one sign) and its rescale
numel / kept are Levanter's, with the weight decay left unmasked as there.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .base import EPS, BuildContext, beta_hparam, declare_optimizer, lr_hparam, weight_decay_hparam

if TYPE_CHECKING:
    import torch


@declare_optimizer(
    name="cautious",
    # The paper's best at 130M / 1x Chinchilla (lr 8e-3, beta 0.95/0.98, wd 0.1, eps 1e-15).
    hparams=[
        lr_hparam(8e-3),
        beta_hparam("beta1", 0.95),
        beta_hparam("beta2", 0.98),
        weight_decay_hparam(0.1),
        replace(EPS, default=1e-15),
    ],
    libraries=["heavyball"],
)
def build_cautious(model: torch.nn.Module, hparams: dict[str, Any], context: BuildContext) -> torch.optim.Optimizer:
    """heavyball.AdamW(caution=True) over the weight-decay groups, as plain AdamW otherwise."""
    import heavyball

    from .parts import param_groups

    # heavyball compiles its update functions by default (minutes per shape with max-autotune, and not the
    # update that was checked against Levanter's); eager keeps runs bitwise repeatable on the CPU.
    heavyball.utils.compile_mode = None
    return heavyball.AdamW(
        param_groups(model, hparams["weight_decay"], context.decay_exclude),
        lr=hparams["lr"],
        betas=(hparams["beta1"], hparams["beta2"]),
        eps=hparams["eps"],
        caution=True,
        # Its sentinel defaults would add its own gradient and update clipping; the shared global clip is the
        # only one, as in the paper.
        gradient_clipping=None,
        update_clipping=None,
        compile_step=False,
        warmup_steps=0,  # the declared schedule warms up
    )
