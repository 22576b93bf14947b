"""Optimizers as plug-ins: a name, typed hyperparameter declarations and a function that builds it.

    optimizer, schedule = build("muon", model, {"lr": 0.02, "muon_to_adam_lr": 0.2}, steps=1000)
    identity = optimizer_identity("muon")   # for the run key, next to the hyperparameters

Every optimizer has `min_lr_ratio`, `warmup` and `clip`, and runs under the schedule it declares
(`Schedule`: cosine or linear, with a `decay` fraction, see parts.lr_factor); a plug-in declares only
its own hyperparameters. Its build function returns the optimizer at its peak learning rates (one per param
group) and `build` puts the declared schedule on top, so no optimizer can get the schedule wrong. A joint
optimizer names the parts `clip` bounds (Muon's AdamW part).

Built in, one module each: `adamw` (the study's AdamW, unchanged), `muon` (torch.optim.Muon on the hidden
matrices, AdamW on the rest at a ratio of its lr), `lion` (pytorch-optimizer), `soap` (heavyball's, on blocks), and
the follow-up study's:
- `nadamw`: torch's NAdam, decoupled decay, constant Nesterov momentum (the paper's NAdamW);
- `cautious`: heavyball's AdamW with `caution` (C-AdamW);
- `adam_mini`: the authors' Adam-mini, with the study's decay exclusion;
- `mars`: pytorch-optimizer's MARS-AdamW on every parameter;
- `scion`: torch's Muon without Nesterov on the hidden matrices, Signum on the rest at `scion_to_signum_lr` x lr;
- `kron`: pytorch-optimizer's PSGD Kron with the paper's update-probability schedule.
`base` holds what a plug-in is made of and `registry` finds, checks and builds them. Anyone's own optimizer
plugs in as "module:function", a function declared with `@declare_optimizer(hparams=[...])`.
"""

from .adam_mini import build_adam_mini
from .adamw import build_adamw
from .base import (
    AT_LEAST_ONE,
    BATCH_SIZE,
    DECAY_KINDS,
    DECAY_RATE,
    EPS,
    FRACTION,
    NON_NEGATIVE,
    OPTIONAL_HPARAMS,
    POSITIVE,
    SHARED_HPARAMS,
    BuildContext,
    BuildFunction,
    Domain,
    Hparam,
    OptimizerPlugin,
    Schedule,
    ScheduleKind,
    beta_hparam,
    declare_optimizer,
    hidden_matrices,
    lr_hparam,
    weight_decay_hparam,
)
from .cautious import build_cautious
from .kron import build_kron
from .lion import build_lion
from .mars import build_mars
from .muon import build_muon
from .nadamw import build_nadamw
from .registry import (
    BUILT_IN,
    build,
    check_hparams,
    load_optimizer,
    optimizer_code,
    optimizer_identity,
    resolve_hparams,
)
from .scion import build_scion
from .soap import build_soap

__all__ = [
    "AT_LEAST_ONE",
    "BATCH_SIZE",
    "BUILT_IN",
    "DECAY_KINDS",
    "DECAY_RATE",
    "EPS",
    "FRACTION",
    "NON_NEGATIVE",
    "OPTIONAL_HPARAMS",
    "POSITIVE",
    "SHARED_HPARAMS",
    "BuildContext",
    "BuildFunction",
    "Domain",
    "Hparam",
    "OptimizerPlugin",
    "Schedule",
    "ScheduleKind",
    "beta_hparam",
    "build",
    "build_adam_mini",
    "build_adamw",
    "build_cautious",
    "build_kron",
    "build_lion",
    "build_mars",
    "build_muon",
    "build_nadamw",
    "build_scion",
    "build_soap",
    "check_hparams",
    "declare_optimizer",
    "hidden_matrices",
    "load_optimizer",
    "lr_hparam",
    "optimizer_code",
    "optimizer_identity",
    "resolve_hparams",
    "weight_decay_hparam",
]
