"""AdamW as the study defines it, and the parts every optimizer shares: parameter groups for weight decay,
the lr schedules, gradient clipping.

AdamW's eight hyperparameters (`lr, min_lr_ratio, warmup, beta1, beta2, weight_decay, eps, clip`) map onto
torch's AdamW, a `LambdaLR` cosine schedule and `clip_grad_norm_`; nothing else about the optimizer is tuned.
Every optimizer (optsweep.optimizers, whose `build` puts optimizer and schedule together) reuses the
groups, the schedule of the kind it declares (cosine or linear, with a `decay` fraction) and the clipping,
over every parameter or over the part a joint optimizer names (Muon's AdamW branch).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Collection, Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

from .base import DECAY_KINDS, FULL_DECAY, ScheduleKind


def param_kind(module: torch.nn.Module, name: str) -> str:
    """What a parameter is, for the weight-decay decision: norm, embedding, bias or weight.

    Only the input embedding (a lookup table) counts as an embedding. The untied output head is a linear
    projection like every hidden matrix and is decayed with them, as Levanter (the original study's
    trainer) does; decaying it also keeps its norm in check, which the tied Llama-2 heads get for free.
    """
    if name.endswith("bias"):
        return "bias"
    if isinstance(module, torch.nn.Embedding):
        return "embedding"
    if "norm" in type(module).__name__.lower():
        return "norm"
    return "weight"


def param_groups(
    model: torch.nn.Module,
    weight_decay: float,
    decay_exclude: Iterable[str] = DECAY_KINDS,
    skip: Collection[int] = (),
) -> list[dict[str, Any]]:
    """Two groups: decayed parameters, and those whose kind is in `decay_exclude` (no decay).

    `skip` holds the ids of parameters that another optimizer updates (Muon's hidden matrices).
    """
    excluded = set(decay_exclude)
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if param.requires_grad and id(param) not in skip:
                (no_decay if param_kind(module, name) in excluded else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def lr_factor(
    step: int, steps: int, warmup: int, min_lr_ratio: float, kind: ScheduleKind = "cosine", decay: float = FULL_DECAY
) -> float:
    """Multiplier of the peak lr for optimizer step `step` (0-based) of a run of `steps` steps.

    Linear warmup from 0 at step 0 to 1 at step `warmup`; constant (the stable phase of WSD) until the last
    `decay` fraction of the run, never before warmup ends; then a cosine or linear decay down to
    `min_lr_ratio` at the last step (`steps - 1`), so the run ends exactly at the minimum. At `decay` 1 the
    decay starts where warmup ends (the study's cosine).
    """
    if step < warmup:
        return step / warmup
    start = max(warmup, round((1.0 - decay) * (steps - 1)))
    if step < start:
        return 1.0
    progress = min(1.0, (step - start) / max(1, steps - 1 - start))
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress
    return min_lr_ratio + (1.0 - min_lr_ratio) * shape


def lr_schedule(
    optimizer: torch.optim.Optimizer,
    steps: int,
    warmup: int,
    min_lr_ratio: float,
    kind: ScheduleKind = "cosine",
    decay: float = FULL_DECAY,
) -> LambdaLR:
    """The schedule: every param group's lr follows `lr_factor` times the lr it was created with (so lrs tied
    as ratios, like Muon's AdamW part, move together)."""
    return LambdaLR(optimizer, lambda step: lr_factor(step, steps, warmup, min_lr_ratio, kind, decay))


def adamw(
    model: torch.nn.Module, hparams: dict[str, Any], decay_exclude: Iterable[str] = DECAY_KINDS, fused: bool = False
) -> torch.optim.AdamW:
    """AdamW over `param_groups`, at its peak lr (the schedule scales it)."""
    return torch.optim.AdamW(
        param_groups(model, hparams["weight_decay"], decay_exclude),
        lr=hparams["lr"],
        betas=(hparams["beta1"], hparams["beta2"]),
        eps=hparams["eps"],
        fused=fused,
    )


def clip_gradients(params: Iterable[torch.nn.Parameter], clip: float) -> torch.Tensor | None:
    """Scale the gradients of `params` so that their global norm is at most `clip` (0 = off).

    Returns the norm before clipping as a device tensor (reading it would force a host sync), or None.
    """
    if clip <= 0:
        return None
    return torch.nn.utils.clip_grad_norm_(params, clip)


def clipped_parameters(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters whose gradients `clip` bounds: a joint optimizer's clipped parts (Muon's and Scion's
    AdamW/Signum branch, as the paper clips), else every parameter of the model."""
    if isinstance(optimizer, JointOptimizer):
        return optimizer.clipped_parameters()
    return list(model.parameters())


class JointOptimizer(torch.optim.Optimizer):
    """Optimizers over disjoint parameters that step as one (Muon's matrices and AdamW's rest).

    Its `param_groups` are the very group dicts of the parts, so one schedule moves every part's lr, and its
    state dict holds every part's, so one checkpoint restores them all. `clipped` names the parts whose
    gradients the `clip` hyperparameter bounds (default: all).
    """

    def __init__(self, parts: list[torch.optim.Optimizer], clipped: list[torch.optim.Optimizer] | None = None) -> None:
        self.parts = parts
        self.clipped = parts if clipped is None else clipped
        super().__init__([p for part in parts for group in part.param_groups for p in group["params"]], {})
        self._link_groups()

    def clipped_parameters(self) -> list[torch.nn.Parameter]:
        return [p for part in self.clipped for group in part.param_groups for p in group["params"]]

    def _link_groups(self) -> None:
        self.param_groups = [group for part in self.parts for group in part.param_groups]

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:
        if closure is not None:
            with torch.enable_grad():
                closure()
        for part in self.parts:
            part.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"parts": [part.state_dict() for part in self.parts]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for part, state in zip(self.parts, state_dict["parts"], strict=True):
            part.load_state_dict(state)
        self._link_groups()  # loading replaces the parts' group dicts
