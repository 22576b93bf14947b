"""SOAP from heavyball: Adam in the eigenbasis of a Shampoo preconditioner, on blocks as the paper ran it.

The paper (Levanter) preconditions blocks of `block_size` (best 256): every dimension longer than that, the
vocabulary included, is cut into blocks, each with its own Shampoo factors. heavyball's `split=True` with
`max_precond_dim = block_size` does the same (after merging small dimensions, as Levanter's
`merge_small_dims`); pytorch-optimizer's SOAP has no blocks and leaves long dimensions unpreconditioned.
"""

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
    # The paper's best at 130M / 1x Chinchilla: precondition frequency 1, blocks of 256.
    hparams=[
        lr_hparam(3e-3),
        beta_hparam("beta1", 0.95),
        beta_hparam("beta2", 0.95),
        beta_hparam("shampoo_beta", 0.95),
        weight_decay_hparam(0.01),
        EPS,
        Hparam("precondition_frequency", 1, AT_LEAST_ONE, "log", integer=True, help="steps between eigenbases"),
        Hparam("block_size", 256, AT_LEAST_ONE, "log", integer=True,
               help="longer dimensions are cut into blocks of this size, each preconditioned alone"),
    ],
    libraries=["heavyball"],
)
def build_soap(model: torch.nn.Module, hparams: dict[str, Any], context: BuildContext) -> torch.optim.Optimizer:
    """heavyball.SOAP on blocks, over the weight-decay groups, eager and without heavyball's own clipping."""
    import heavyball

    from .parts import param_groups

    heavyball.utils.compile_mode = None  # eager: bitwise repeatable on the CPU, no compile per shape
    return heavyball.SOAP(
        param_groups(model, hparams["weight_decay"], context.decay_exclude),
        lr=hparams["lr"],
        betas=(hparams["beta1"], hparams["beta2"]),
        shampoo_beta=hparams["shampoo_beta"],
        eps=hparams["eps"],
        weight_decay=hparams["weight_decay"],
        precondition_frequency=hparams["precondition_frequency"],
        max_precond_dim=hparams["block_size"],
        merge_dims=True,
        split=True,
        use_precond_schedule=False,  # a fixed frequency, as the paper's
        gradient_clipping=None,
        update_clipping=None,
        compile_step=False,
        warmup_steps=0,  # the declared schedule warms up
    )
