"""What every optimizer plug-in is made of: hyperparameter declarations with their domains and axes, the build
context, the plug-in itself and `declare_optimizer`; plus the declarations and helpers the built-ins share.

Near a leaf: at import it needs only the axes, not torch, so that params validation, which reads these
declarations, stays light (`hidden_matrices` imports optsweep.optimizers.parts when called). Its code is part
of every optimizer's identity (see `registry.optimizer_identity`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Literal

import numpy as np

from ..axes import FROM_AXIS, TO_AXIS, Axis

if TYPE_CHECKING:
    import torch

DECAY_KINDS = ("norm", "embedding", "bias")  # parameter kinds without weight decay (optim.param_kind)


@dataclass(frozen=True)
class Domain:
    """An interval of allowed finite values; `low_open`/`high_open` leave an end out (infinite ends are)."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return math.isfinite(value) and above and below

    def __str__(self) -> str:
        left = "(" if self.low_open or math.isinf(self.low) else "["
        right = ")" if self.high_open or math.isinf(self.high) else "]"
        return f"{left}{self.low:g}, {self.high:g}{right}"


POSITIVE = Domain(0, math.inf, low_open=True)
NON_NEGATIVE = Domain(0, math.inf)
FRACTION = Domain(0, 1)
DECAY_RATE = Domain(0, 1, high_open=True)  # betas and momenta: 1 would never forget
AT_LEAST_ONE = Domain(1, math.inf)


@dataclass(frozen=True)
class Hparam:
    """One hyperparameter: its values, the axis the analysis studies it on, and its default.

    Axes: "log" (lr, eps), "log1m" = log(1 - x) (betas, momenta: 0.9 -> 0.99 is one step like 0.99 ->
    0.999), "log1p" = log(1 + x) (counts that may be 0, like warmup), "linear" (ratios, weight decay).
    """

    name: str
    default: float | int
    domain: Domain
    axis: Axis
    integer: bool = False
    help: str = ""

    def to_axis(self, values: Any) -> np.ndarray:
        return TO_AXIS[self.axis](np.asarray(values, dtype=float))

    def from_axis(self, x: Any) -> np.ndarray:
        return FROM_AXIS[self.axis](np.asarray(x, dtype=float))

    def problem(self, value: Any) -> str | None:
        """Why `value` is not allowed, or None."""
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return f"must be a number, got {value!r}"
        if value not in self.domain:
            return f"{value!r} is outside {self.domain}"
        if self.integer and value != int(value):
            return f"must be an integer, got {value!r}"
        return None


# Every optimizer runs under a schedule of these knobs and the clipping (optsweep.optimizers.parts).
SHARED_HPARAMS: tuple[Hparam, ...] = (
    Hparam("min_lr_ratio", 0.0, FRACTION, "linear", help="lr at the last step, as a fraction of the peak"),
    Hparam("warmup", 0, NON_NEGATIVE, "log1p", integer=True, help="optimizer steps of linear warmup from 0"),
    Hparam("clip", 1.0, NON_NEGATIVE, "linear", help="max global gradient norm (0 = off)"),
)


ScheduleKind = Literal["cosine", "linear"]
FULL_DECAY = 1.0  # the decay phase spans the whole run after warmup


@dataclass(frozen=True)
class Schedule:
    """The lr schedule an optimizer declares (optsweep.optimizers.parts.lr_factor): linear warmup from 0 over `warmup`
    steps, constant, then a `kind`-shaped decay to `min_lr_ratio * lr` over the last `decay` fraction of the
    run. `decay` 1 decays from the end of warmup (the study's cosine); below 1 it is warmup-stable-decay (WSD).

    `decay` is the default of the optimizer's `decay` hyperparameter, which only optimizers that declare a
    default have (so AdamW's hyperparameters, and run keys, stay the study's); None means a fixed 1.
    """

    kind: ScheduleKind = "cosine"
    decay: float | None = None

    def hparams(self) -> tuple[Hparam, ...]:
        if self.decay is None:
            return ()
        return (Hparam("decay", self.decay, Domain(0, 1, low_open=True), "linear",
                       help="fraction of the run spent decaying, at its end (< 1: warmup-stable-decay)"),)

    def decay_of(self, hparams: dict[str, Any]) -> float:
        return hparams["decay"] if self.decay is not None else FULL_DECAY


BATCH_SIZE = Hparam("batch_size", 1, AT_LEAST_ONE, "log", integer=True, help="sequences per optimizer step")
OPTIONAL_HPARAMS: tuple[str, ...] = (BATCH_SIZE.name,)  # a run setting every optimizer accepts (and ignores)


@dataclass(frozen=True)
class BuildContext:
    """What a build function may need besides the model and hyperparameters."""

    steps: int  # optimizer steps in the run
    decay_exclude: tuple[str, ...] = DECAY_KINDS
    fused: bool = False  # the device has fused kernels (CUDA)


BuildFunction = Callable[["torch.nn.Module", dict[str, Any], BuildContext], "torch.optim.Optimizer"]


@dataclass(frozen=True)
class OptimizerPlugin:
    """An optimizer: its name, its own hyperparameters and the function that builds it at peak lr."""

    name: str
    own_hparams: tuple[Hparam, ...]
    make: BuildFunction
    libraries: tuple[str, ...] = ()  # distributions whose version decides its results
    schedule: Schedule = Schedule()

    def __post_init__(self) -> None:
        declared = (*self.own_hparams, *SHARED_HPARAMS, *self.schedule.hparams())
        if len(self.hparams) != len(declared):
            raise ValueError(f"optimizer {self.name!r}: a hyperparameter is declared twice (or shadows a shared one)")

    @property
    def hparams(self) -> dict[str, Hparam]:
        """Its own hyperparameters, then the shared ones, then its schedule's `decay` when it declares one."""
        return {h.name: h for h in (*self.own_hparams, *SHARED_HPARAMS, *self.schedule.hparams())}


def declare_optimizer(
    hparams: Iterable[Hparam], libraries: Iterable[str] = (), name: str | None = None, schedule: Schedule = Schedule()
) -> Callable[[BuildFunction], OptimizerPlugin]:
    """Decorator that turns a build function `f(model, hparams, context) -> Optimizer` into a plug-in.

    `hparams` are the optimizer's own (the shared `min_lr_ratio`, `warmup`, `clip` come with it, and `decay`
    when `schedule` declares a default for it); the plug-in is named "module:function" unless `name` is given,
    which is how params refer to it.
    """

    def wrap(make: BuildFunction) -> OptimizerPlugin:
        plugin_name = name or f"{make.__module__}:{make.__name__}"
        return OptimizerPlugin(plugin_name, tuple(hparams), make, tuple(libraries), schedule)

    return wrap


# --- declarations the built-in optimizers share -----------------------------------------------------------


def lr_hparam(default: float) -> Hparam:
    return Hparam("lr", default, POSITIVE, "log", help="peak learning rate")


def beta_hparam(name: str, default: float) -> Hparam:
    return Hparam(name, default, DECAY_RATE, "log1m")


def weight_decay_hparam(default: float) -> Hparam:
    return Hparam("weight_decay", default, NON_NEGATIVE, "linear", help="decoupled, skips the decay_exclude kinds")


EPS = Hparam("eps", 1e-8, POSITIVE, "log")


def hidden_matrices(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The 2-D weights of the hidden layers (attention and MLP), in model order: what Muon updates.

    Left out, as is standard practice: the input embedding (a lookup table, not a linear map), the output
    head (found by the transformers API `get_output_embeddings`), norms and biases.
    """
    from .parts import param_kind

    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if get_head else None
    return [
        param
        for module in model.modules()
        if module is not head
        for name, param in module.named_parameters(recurse=False)
        if param.requires_grad and param.ndim == 2 and param_kind(module, name) == "weight"
    ]
