"""A complete recommended hyperparameter set for N parameters and D tokens from a scaling_law.json."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm, t

from ..optimizers import BUILT_IN
from ..params.settings import ParamsError
from ..params.study import LrTransfer
from ..results.documents import HparamLaw, PredictionInputs, ScalingLaws, as_json
from .law_fit import design_matrix, untransform
from .table import hparam_names

# |corr(log N, log D)| above this (variance inflation above ~20) makes the N and D exponents unidentifiable.
# Predicted as whole numbers: batch size and every built-in optimizer's integer hyperparameters (warmup, ...).
INTEGER_HPARAMS = ("batch_size", *sorted({h.name for p in BUILT_IN.values() for h in p.hparams.values() if h.integer}))


@dataclass(frozen=True)
class Prediction:
    """A recommended hyperparameter set at one (N, D) (what `optsweep predict` prints): each value (None: no
    law), the 95% prediction interval of each fitted one, where each came from, and what was extrapolated."""

    n_params: float
    tokens: float
    width: int | None
    hparams: dict[str, float | int | None]
    intervals: dict[str, list[float]]
    sources: dict[str, str]
    notes: list[str]


def predict(
    law: PredictionInputs | ScalingLaws, n_params: float, tokens: float, width: int | None = None
) -> Prediction:
    """A complete recommended hyperparameter set for N params and D tokens: fitted laws with 95% prediction
    intervals (statsmodels, refitted on the stored points), constants for the rest (moved to `width` when
    a width rule applies)."""
    values: dict[str, float | int | None] = {}
    intervals: dict[str, list[float]] = {}
    sources: dict[str, str] = {}
    notes: list[str] = []
    for hparam, fit in law.laws.items():
        values[hparam], intervals[hparam], extrapolated = _predict_from_law(hparam, fit, n_params, tokens)
        sources[hparam] = fit.form
        if extrapolated:
            what = {"N_D": "N or D", "N": "N", "D": "D"}.get(fit.kind, "compute")
            notes.append(f"{hparam}: {what} outside the fitted scales, extrapolated")
    for hparam, constant in law.constants.items():
        rule = constant.rule
        factor = 1.0
        if rule != "none":
            if width is None:
                raise ParamsError(
                    f"{hparam} follows the {rule} rule from width {constant.reference_width}: pass --width"
                )
            factor = LrTransfer(rule=rule, reference_width=constant.reference_width).factor(width)
        values[hparam] = _as_hparam(hparam, constant.value * factor)
        at_width = f" at width {constant.reference_width}, {rule}" if rule != "none" else ""
        sources[hparam] = "constant" + at_width
    for hparam, why in law.unfitted.items():
        values[hparam] = None
        sources[hparam] = f"no law: {why}"
    order = {h: i for i, h in enumerate(hparam_names())}
    return Prediction(
        n_params=n_params, tokens=tokens, width=width,
        hparams=dict(sorted(values.items(), key=lambda item: order.get(item[0], len(order)))),
        intervals=intervals, sources=sources, notes=notes,
    )


def _predict_from_law(
    hparam: str, fit: HparamLaw, n_params: float, tokens: float
) -> tuple[float | int, list[float], bool]:
    """Estimate, 95% prediction interval (for an optimum of average standard error) and whether (N, D) lies
    outside the fitted points, from the law's stored coefficients and their covariance."""
    names = list(fit.coefficients)
    beta = np.array([fit.coefficients[name].estimate for name in names])
    target = design_matrix(pd.DataFrame({"n_params": [n_params], "tokens": [tokens]}), fit.kind)[names].to_numpy()[0]
    mean = float(target @ beta)
    spread = math.sqrt(float(target @ np.asarray(fit.covariance) @ target) + fit.residual_std ** 2)
    q = float(t.ppf(0.975, fit.df_resid)) if fit.df_resid else float(norm.ppf(0.975))
    interval = sorted(untransform(hparam, [mean - q * spread, mean + q * spread]).tolist())
    used = pd.DataFrame([as_json(p) for p in fit.points if p.used])
    regressors = design_matrix(used, fit.kind)[names[1:]]
    point = pd.Series(target[1:], index=names[1:])
    extrapolated = bool(((point < regressors.min() - 1e-9) | (point > regressors.max() + 1e-9)).any())
    return _as_hparam(hparam, float(untransform(hparam, mean))), interval, extrapolated


def _as_hparam(hparam: str, value: float) -> float | int:
    return int(round(value)) if hparam in INTEGER_HPARAMS else float(value)

