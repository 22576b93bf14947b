"""A user's own optimizer, plugged in as "user_optimizer:sgd" (tests/ is on the test path)."""

from __future__ import annotations

from typing import Any

import torch

from optsweep.optimizers import DECAY_RATE, NON_NEGATIVE, POSITIVE, BuildContext, Hparam, declare_optimizer
from optsweep.optimizers.parts import param_groups


@declare_optimizer(
    hparams=[
        Hparam("lr", 0.3, POSITIVE, "log"),
        Hparam("momentum", 0.9, DECAY_RATE, "log1m"),
        Hparam("weight_decay", 0.0, NON_NEGATIVE, "linear"),
    ],
)
def sgd(model: torch.nn.Module, hparams: dict[str, Any], context: BuildContext) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum over the study's weight-decay groups."""
    groups = param_groups(model, hparams["weight_decay"], context.decay_exclude)
    return torch.optim.SGD(groups, lr=hparams["lr"], momentum=hparams["momentum"], nesterov=True)


not_declared = sgd.make  # a plain function: not a plug-in
