"""Kron (PSGD with Kronecker-factored preconditioners) from pytorch-optimizer, the paper's Kron.

Missing in every torch library, and so here: the paper's `partition_grads_into_blocks` / `block_size` (256)
and `normalize_grads` (best True; Levanter then skips the global clip: `clip: 0` here skips it too, but does
not normalise).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from .base import (
    NON_NEGATIVE,
    POSITIVE,
    BuildContext,
    Domain,
    Hparam,
    beta_hparam,
    declare_optimizer,
    lr_hparam,
    weight_decay_hparam,
)

if TYPE_CHECKING:
    import torch

# Levanter's Kron: a dimension up to this size gets a triangular (dense) factor, a longer one a diagonal
# (pytorch-optimizer's default is 8192).
MAX_SIZE_TRIANGULAR = 25000


@declare_optimizer(
    name="kron",
    # The paper's best at 130M / 1x Chinchilla (lr 2e-3, beta1 0.95, wd 0.7, preconditioner lr 0.2, update
    # probability 0.05 after a flat start of 2000 steps).
    hparams=[
        lr_hparam(2e-3),
        beta_hparam("beta1", 0.95),
        weight_decay_hparam(0.7),
        Hparam("preconditioner_lr", 0.2, POSITIVE, "log", help="step size of the preconditioner fit"),
        Hparam(
            "update_probability", 0.05, Domain(0, 1, low_open=True), "log",
            help="the preconditioner's update frequency once the schedule has decayed",
        ),
        Hparam(
            "update_prob_flat_start", 2000, NON_NEGATIVE, "log1p", integer=True,
            help="steps during which the preconditioner updates every step, before it decays to update_probability",
        ),
    ],
    libraries=["pytorch-optimizer"],
)
def build_kron(model: torch.nn.Module, hparams: dict[str, Any], context: BuildContext) -> torch.optim.Optimizer:
    """pytorch_optimizer.Kron over the weight-decay groups (it decays only tensors of 2 or more dimensions)."""
    import pytorch_optimizer
    import torch
    from pytorch_optimizer.optimizer.psgd import precondition_update_prob_schedule

    from .parts import param_groups

    schedule = precondition_update_prob_schedule(
        min_prob=hparams["update_probability"], flat_start=hparams["update_prob_flat_start"]
    )

    class ScheduledKron(pytorch_optimizer.Kron):
        """Kron whose param groups hold the schedule's current probability, a number, instead of the schedule:
        a function in a group would not pass the trainer's `torch.load(weights_only=True)` of checkpoints."""

        def step(self, closure: Callable[[], float] | None = None) -> float | None:
            first = self.param_groups[0]
            done = first.get("step", 0)
            first["pre_conditioner_update_probability"] = float(schedule(done))
            # The preconditioner fit draws random probes (torch.randn_like). Drawn from a generator seeded by
            # the step, a run's probes depend neither on what its process ran before nor on a resume.
            with torch.random.fork_rng(devices=cuda_devices(self)):
                torch.manual_seed(done)
                return super().step(closure)

    optimizer = ScheduledKron(
        param_groups(model, hparams["weight_decay"], context.decay_exclude),
        lr=hparams["lr"],
        momentum=hparams["beta1"],
        weight_decouple=True,
        pre_conditioner_update_probability=float(schedule(0)),
        max_size_triangular=MAX_SIZE_TRIANGULAR,
        # Balancing rescales the factors to equal norms and leaves their product, the preconditioner, as it
        # is. The library draws it with numpy's unseeded global generator (probability 0.01 per update);
        # balancing at every update instead keeps runs bitwise repeatable and resumable.
        balance_prob=1.0,
    )
    for group in optimizer.param_groups:  # the library fixes it at 0.1 and takes no argument for it
        group["precondition_lr"] = hparams["preconditioner_lr"]
    return optimizer


def cuda_devices(optimizer: torch.optim.Optimizer) -> list[torch.device]:
    """The CUDA devices of the optimizer's parameters, whose generators a probe may draw from."""
    return sorted({p.device for g in optimizer.param_groups for p in g["params"] if p.device.type == "cuda"}, key=str)
