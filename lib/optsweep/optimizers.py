"""Optimizers as plug-ins: a name, typed hyperparameter declarations and a function that builds it.

    optimizer, schedule = build("muon", model, {"lr": 0.02, "adam_lr": 3e-3}, steps=1000)
    identity = optimizer_identity("muon")   # for the run key, next to the hyperparameters

Every optimizer shares the schedule (linear warmup from 0, cosine to `min_lr_ratio * lr` at the last step,
see optsweep.optim) and gradient clipping, so `min_lr_ratio`, `warmup` and `clip` are hyperparameters of
every optimizer; a plug-in declares only its own. Its build function returns the optimizer at its peak
learning rates (one per param group) and `build` puts the shared schedule on top, so no optimizer can get
the schedule wrong.

Built in: `adamw` (the study's AdamW, unchanged), `muon` (torch.optim.Muon on the hidden matrices, AdamW on
the rest), `lion` and `soap` (both from pytorch-optimizer). Anyone's own optimizer plugs in as
"module:function", a function declared with `@declare_optimizer(hparams=[...])`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import math
import numbers
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from .axes import FROM_AXIS, TO_AXIS, Axis
from .config import OPTIONAL_HPARAMS, ParamsError

# torch (and the optimizer libraries) are imported by the build functions only: params validation, which
# reads the declarations here, stays light.
if TYPE_CHECKING:
    import torch
    from torch.optim.lr_scheduler import LambdaLR

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


# Every optimizer runs under the shared schedule and clipping (optsweep.optim).
SHARED_HPARAMS: tuple[Hparam, ...] = (
    Hparam("min_lr_ratio", 0.0, FRACTION, "linear", help="lr at the last step, as a fraction of the peak"),
    Hparam("warmup", 0, NON_NEGATIVE, "log1p", integer=True, help="optimizer steps of linear warmup from 0"),
    Hparam("clip", 1.0, NON_NEGATIVE, "linear", help="max global gradient norm (0 = off)"),
)


BATCH_SIZE = Hparam("batch_size", 1, AT_LEAST_ONE, "log", integer=True, help="sequences per optimizer step")


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

    def __post_init__(self) -> None:
        if len(self.hparams) != len(self.own_hparams) + len(SHARED_HPARAMS):
            raise ValueError(f"optimizer {self.name!r}: a hyperparameter is declared twice (or shadows a shared one)")

    @property
    def hparams(self) -> dict[str, Hparam]:
        """Its own hyperparameters, then the shared ones."""
        return {h.name: h for h in (*self.own_hparams, *SHARED_HPARAMS)}


def declare_optimizer(
    hparams: Iterable[Hparam], libraries: Iterable[str] = (), name: str | None = None
) -> Callable[[BuildFunction], OptimizerPlugin]:
    """Decorator that turns a build function `f(model, hparams, context) -> Optimizer` into a plug-in.

    `hparams` are the optimizer's own (the shared `min_lr_ratio`, `warmup`, `clip` come with it); the plug-in
    is named "module:function" unless `name` is given, which is how params refer to it.
    """

    def wrap(make: BuildFunction) -> OptimizerPlugin:
        return OptimizerPlugin(name or f"{make.__module__}:{make.__name__}", tuple(hparams), make, tuple(libraries))

    return wrap


# --- built-in optimizers ----------------------------------------------------------------------------------


def _lr(default: float) -> Hparam:
    return Hparam("lr", default, POSITIVE, "log", help="peak learning rate")


def _beta(name: str, default: float) -> Hparam:
    return Hparam(name, default, DECAY_RATE, "log1m")


def _weight_decay(default: float) -> Hparam:
    return Hparam("weight_decay", default, NON_NEGATIVE, "linear", help="decoupled, skips the decay_exclude kinds")


EPS = Hparam("eps", 1e-8, POSITIVE, "log")


@declare_optimizer(
    name="adamw",
    hparams=[_lr(1e-3), _beta("beta1", 0.9), _beta("beta2", 0.95), _weight_decay(0.1), EPS],
    libraries=["torch"],
)
def build_adamw(model: torch.nn.Module, hparams: dict[str, Any], context: BuildContext) -> torch.optim.Optimizer:
    """The study's AdamW (optsweep.optim.adamw), bit for bit."""
    from .optim import adamw

    return adamw(model, hparams, context.decay_exclude, context.fused)


def hidden_matrices(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The 2-D weights of the hidden layers (attention and MLP), in model order: what Muon updates.

    Left out, as is standard practice: the input embedding (a lookup table, not a linear map), the output
    head (found by the transformers API `get_output_embeddings`), norms and biases.
    """
    from .optim import param_kind

    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if get_head else None
    return [
        param
        for module in model.modules()
        if module is not head
        for name, param in module.named_parameters(recurse=False)
        if param.requires_grad and param.ndim == 2 and param_kind(module, name) == "weight"
    ]


@declare_optimizer(
    name="muon",
    hparams=[
        _lr(0.02),
        Hparam("momentum", 0.95, DECAY_RATE, "log1m", help="Muon's Nesterov momentum"),
        _weight_decay(0.1),
        Hparam("adam_lr", 3e-3, POSITIVE, "log", help="peak lr of the AdamW part (embedding, head, norms)"),
        _beta("beta1", 0.9),
        _beta("beta2", 0.95),
    ],
    libraries=["torch"],
)
def build_muon(model: torch.nn.Module, hparams: dict[str, Any], context: BuildContext) -> torch.optim.Optimizer:
    """torch.optim.Muon on the hidden matrices, AdamW (same weight decay, eps 1e-8) on everything else."""
    import torch

    from .optim import JointOptimizer, param_groups

    matrices = hidden_matrices(model)
    muon = torch.optim.Muon(
        matrices, lr=hparams["lr"], weight_decay=hparams["weight_decay"], momentum=hparams["momentum"]
    )
    rest = param_groups(model, hparams["weight_decay"], context.decay_exclude, skip={id(p) for p in matrices})
    adam = torch.optim.AdamW(
        rest, lr=hparams["adam_lr"], betas=(hparams["beta1"], hparams["beta2"]), eps=1e-8, fused=context.fused
    )
    return JointOptimizer([muon, adam])


@declare_optimizer(
    name="lion",
    hparams=[_lr(3e-4), _beta("beta1", 0.9), _beta("beta2", 0.99), _weight_decay(0.1)],
    libraries=["pytorch-optimizer"],
)
def build_lion(model: torch.nn.Module, hparams: dict[str, Any], context: BuildContext) -> torch.optim.Optimizer:
    """pytorch-optimizer's Lion (sign of an interpolated momentum) with decoupled weight decay."""
    import pytorch_optimizer

    from .optim import param_groups

    return pytorch_optimizer.Lion(
        param_groups(model, hparams["weight_decay"], context.decay_exclude),
        lr=hparams["lr"],
        betas=(hparams["beta1"], hparams["beta2"]),
        weight_decouple=True,
    )


@declare_optimizer(
    name="soap",
    hparams=[
        _lr(3e-3),
        _beta("beta1", 0.95),
        _beta("beta2", 0.95),
        _beta("shampoo_beta", 0.95),
        _weight_decay(0.01),
        EPS,
        Hparam("precondition_frequency", 10, AT_LEAST_ONE, "log", integer=True, help="steps between eigenbases"),
        Hparam(
            "max_precondition_dim", 1024, AT_LEAST_ONE, "log", integer=True,
            help="longer dimensions (e.g. the vocabulary) are not preconditioned",
        ),
    ],
    libraries=["pytorch-optimizer"],
)
def build_soap(model: torch.nn.Module, hparams: dict[str, Any], context: BuildContext) -> torch.optim.Optimizer:
    """pytorch-optimizer's SOAP: Adam in the eigenbasis of a Shampoo preconditioner, on every parameter."""
    import pytorch_optimizer

    from .optim import param_groups

    return pytorch_optimizer.SOAP(
        param_groups(model, hparams["weight_decay"], context.decay_exclude),
        lr=hparams["lr"],
        betas=(hparams["beta1"], hparams["beta2"]),
        shampoo_beta=hparams["shampoo_beta"],
        eps=hparams["eps"],
        precondition_frequency=hparams["precondition_frequency"],
        max_precondition_dim=hparams["max_precondition_dim"],
    )


BUILT_IN: dict[str, OptimizerPlugin] = {p.name: p for p in (build_adamw, build_muon, build_lion, build_soap)}


# --- finding, validating and building ---------------------------------------------------------------------


def _error(where: str, message: str) -> ParamsError:
    """A one-line ParamsError, prefixed with where the setting is (e.g. "optimizers.muon.grid") when known."""
    return ParamsError(f"{where}: {message}" if where else message)


def load_optimizer(name: str, where: str = "") -> OptimizerPlugin:
    """A built-in by name, or "module:function" declared with `@declare_optimizer` (one-line ParamsError)."""
    if name in BUILT_IN:
        return BUILT_IN[name]
    module_name, colon, attribute = name.partition(":")
    if not colon:
        raise _error(where, f"unknown optimizer {name!r}; built in: {', '.join(BUILT_IN)}, or 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # any import failure is the user's setting
        raise _error(where, f"cannot import module {module_name!r} ({type(error).__name__}: {error})") from None
    plugin = getattr(module, attribute, None)
    if not isinstance(plugin, OptimizerPlugin):
        raise _error(where, f"{name!r} is not an optimizer declared with @optsweep.optimizers.declare_optimizer")
    return plugin


def check_hparams(name: str, values: dict[str, Any], where: str = "") -> None:
    """Every key is a hyperparameter of the optimizer and every value lies in its domain (one-line ParamsError).

    `batch_size` (config.OPTIONAL_HPARAMS) is a run setting that every optimizer accepts and ignores.
    Use it for grids too: `check_hparams(name, {key: value})` for each grid value.
    """
    plugin = load_optimizer(name, where)
    for key, value in values.items():
        if key in OPTIONAL_HPARAMS:
            problem = BATCH_SIZE.problem(value) if value is not None else None
            if problem:
                raise _error(where, f"{key}: {problem}")
            continue
        if key not in plugin.hparams:
            allowed = ", ".join(plugin.hparams)
            raise _error(where, f"optimizer {plugin.name!r} has no hyperparameter {key!r}; it has: {allowed}")
        problem = plugin.hparams[key].problem(value)
        if problem:
            raise _error(where, f"optimizer {plugin.name!r}, {key}: {problem}")


def resolve_hparams(name: str, values: dict[str, Any], where: str = "") -> dict[str, float | int]:
    """The optimizer's full hyperparameters: `values` checked, the rest at their defaults, integers as int;
    then `batch_size` when given."""
    check_hparams(name, values, where)
    declared = load_optimizer(name, where).hparams
    resolved = {key: values.get(key, hparam.default) for key, hparam in declared.items()}
    typed = {key: int(v) if declared[key].integer else float(v) for key, v in resolved.items()}
    return {**typed, **{key: int(values[key]) for key in OPTIONAL_HPARAMS if values.get(key) is not None}}


def build(
    name: str,
    model: torch.nn.Module,
    hparams: dict[str, Any],
    steps: int,
    decay_exclude: Iterable[str] = DECAY_KINDS,
    fused: bool = False,
) -> tuple[torch.optim.Optimizer, LambdaLR]:
    """The optimizer over `model` and the shared schedule; call `schedule.step()` after every
    `optimizer.step()`, and `optim.clip_gradients(model, hparams["clip"])` before it."""
    from .optim import lr_schedule

    plugin = load_optimizer(name)
    resolved = resolve_hparams(name, hparams)
    optimizer = plugin.make(model, resolved, BuildContext(steps, tuple(decay_exclude), fused))
    return optimizer, lr_schedule(optimizer, steps, resolved["warmup"], resolved["min_lr_ratio"])


@functools.lru_cache(maxsize=None)
def optimizer_identity(name: str) -> dict[str, Any]:
    """What decides an optimizer's results besides its hyperparameters, for the run key (which holds those
    too): its name, the versions of the libraries it comes from and a hash of the source file that builds it."""
    plugin = load_optimizer(name)
    source = Path(inspect.getsourcefile(plugin.make) or "")
    return {
        "name": plugin.name,
        "libraries": {library: _version(library) for library in plugin.libraries},
        "code": hashlib.sha256(source.read_bytes()).hexdigest()[:16] if source.is_file() else None,
    }


def _version(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None
