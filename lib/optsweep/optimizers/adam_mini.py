"""Adam-mini from its authors' package (adam-mini): Adam with one second moment per block of parameters.

The authors' partition: one block per head in the query and key projections; per output row (neuron or
token) in the value and output projections, the MLP, the embedding and the head; one block per norm.
(pytorch-optimizer's older port has one block per tensor for v, o and the MLP.)
Both packages decay the embedding (they exempt only names with "norm", "ln" or "bias"). The package keeps
one param group per tensor, so the study's rule (`decay_exclude`, by parameter kind) replaces theirs group
by group after construction; the package reads each group's `weight_decay` at every step.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Collection

from .base import EPS, BuildContext, beta_hparam, declare_optimizer, lr_hparam, weight_decay_hparam

if TYPE_CHECKING:
    import torch


@declare_optimizer(
    name="adam_mini",
    # The paper's best at 130M / 1x Chinchilla (lr 8e-3, beta 0.9/0.98, wd 0.1, eps 1e-15).
    hparams=[
        lr_hparam(8e-3),
        beta_hparam("beta1", 0.9),
        beta_hparam("beta2", 0.98),
        weight_decay_hparam(0.1),
        replace(EPS, default=1e-15),
    ],
    libraries=["adam-mini"],
)
def build_adam_mini(model: torch.nn.Module, hparams: dict[str, Any], context: BuildContext) -> torch.optim.Optimizer:
    """adam_mini.Adam_mini over the model's named parameters, partitioned by its Llama config."""
    from adam_mini import Adam_mini

    config = model.config
    optimizer = Adam_mini(
        model.named_parameters(),
        lr=hparams["lr"],
        betas=(hparams["beta1"], hparams["beta2"]),
        eps=hparams["eps"],
        weight_decay=hparams["weight_decay"],
        dim=config.hidden_size,
        n_heads=config.num_attention_heads,
        n_kv_heads=config.num_key_value_heads,
        verbose=False,
    )
    # It takes every visible GPU for a shard of the model and all-gathers norm sizes across them; a run here
    # holds the whole model in one process.
    optimizer.world_size = 1
    apply_decay_rule(optimizer, model, hparams["weight_decay"], context.decay_exclude)
    return optimizer


def apply_decay_rule(
    optimizer: torch.optim.Optimizer, model: torch.nn.Module, weight_decay: float, decay_exclude: Collection[str]
) -> None:
    """Set each one-tensor group's weight decay by the study's rule: none for the kinds in `decay_exclude`."""
    from .parts import param_kind

    kinds = {id(p): param_kind(m, n) for m in model.modules() for n, p in m.named_parameters(recurse=False)}
    for group in optimizer.param_groups:
        (param,) = group["params"]
        group["weight_decay"] = 0.0 if kinds[id(param)] in decay_exclude else weight_decay
