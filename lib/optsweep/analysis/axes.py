"""Each hyperparameter's natural axis, where the loss near the optimum is close to a parabola: log for lr,
eps and batch size, log(1 + warmup) (a log axis that allows warmup 0), log(1 - beta) for the betas, linear
for ratios, weight decay and clipping."""

from __future__ import annotations

from typing import Any

import numpy as np

LOG_AXIS = ("lr", "eps", "batch_size")
LOG1P_AXIS = ("warmup",)
BETA_AXIS = ("beta1", "beta2")


def to_axis(hparam: str, values: Any) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if hparam in LOG_AXIS:
        return np.log(values)
    if hparam in LOG1P_AXIS:
        return np.log1p(values)
    if hparam in BETA_AXIS:
        return np.log1p(-values)
    return values


def from_axis(hparam: str, x: Any) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    if hparam in LOG_AXIS:
        return np.exp(x)
    if hparam in LOG1P_AXIS:
        return np.expm1(x)
    if hparam in BETA_AXIS:
        return -np.expm1(x)
    return x
