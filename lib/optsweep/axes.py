"""Each hyperparameter's natural axis, where the loss near the optimum is close to a parabola.

    "log"     lr, eps, batch size: spread over orders of magnitude
    "log1p"   log(1 + x), counts that may be 0 (warmup)
    "log1m"   log(1 - x), betas and momenta: 0.9 -> 0.99 is one step, like 0.99 -> 0.999
    "linear"  ratios, weight decay, clipping, and any name nobody declared

An optimizer plug-in (optsweep.optimizers) declares the axis of each of its hyperparameters. The built-in
optimizers' names are known here (a test checks they agree with the declarations); a sweep result carries
the axes its optimizer declared, and reading it (`declare_axes`) teaches the analysis a user optimizer's.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

import numpy as np

Axis = Literal["log", "log1m", "log1p", "linear"]
TO_AXIS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "log": np.log, "log1m": lambda v: np.log1p(-v), "log1p": np.log1p, "linear": lambda v: v,
}
FROM_AXIS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "log": np.exp, "log1m": lambda x: -np.expm1(x), "log1p": np.expm1, "linear": lambda x: x,
}
# The hyperparameters of the built-in optimizers (optsweep.optimizers) and `batch_size`.
KNOWN_AXES: dict[str, Axis] = {
    "lr": "log", "eps": "log", "batch_size": "log",
    "precondition_frequency": "log", "block_size": "log",
    "gamma": "log", "preconditioner_lr": "log", "update_probability": "log",
    "warmup": "log1p", "update_prob_flat_start": "log1p",
    "beta1": "log1m", "beta2": "log1m", "momentum": "log1m", "shampoo_beta": "log1m",
    "min_lr_ratio": "linear", "weight_decay": "linear", "clip": "linear", "decay": "linear",
    "muon_to_adam_lr": "linear", "scion_to_signum_lr": "linear", "ns_steps": "linear",
}
_declared: dict[str, Axis] = {}  # axes read from sweep results: a user optimizer's declarations


def declare_axes(axes: dict[str, str]) -> None:
    """Adopt the axes an optimizer declared (a sweep result's `axes`), for names the built-ins do not have."""
    for name, axis in axes.items():
        if axis not in TO_AXIS:
            raise ValueError(f"hyperparameter {name!r}: unknown axis {axis!r}; allowed: {', '.join(TO_AXIS)}")
        _declared[name] = axis


def axis_of(hparam: str) -> Axis:
    """A built-in name's axis (one meaning per name across optimizers), else a declared one, else linear."""
    return KNOWN_AXES.get(hparam) or _declared.get(hparam, "linear")


def known_hparams() -> list[str]:
    """Every hyperparameter name with a known or declared axis (the candidate columns of a runs table)."""
    return list(dict.fromkeys([*KNOWN_AXES, *_declared]))


def to_axis(hparam: str, values: Any) -> np.ndarray:
    return TO_AXIS[axis_of(hparam)](np.asarray(values, dtype=float))


def from_axis(hparam: str, x: Any) -> np.ndarray:
    return FROM_AXIS[axis_of(hparam)](np.asarray(x, dtype=float))
