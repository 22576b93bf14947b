"""Scaling laws: a power law in (N, D) for each sensitive hyperparameter, lr against width, and the loss law.

Hyperparameter laws: log h* = a + b log N + c log D by statsmodels OLS on one optimum per scale (several
near-optimal runs of one scale are correlated, so they would overstate the evidence). For the betas the
law is on 1 - beta. When N and D move together in the data (e.g. always D = 20 N) b and c cannot be told
apart, and the fit falls back to log h* = a + b log C with C = 6 N D, saying so. Optima at a grid edge are
bounds, not optima, and are left out while enough interior ones remain.

Loss law: L(N, D) = E + A / N^alpha + B / D^beta on the best loss per scale, Huber loss on log L, scipy
L-BFGS-B from a grid of starts (Hoffmann et al. 2022; Besiroglu et al. 2024).
"""

from __future__ import annotations

import itertools
import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy.optimize import minimize, nnls
from scipy.special import huber

from ..config import ALL_HPARAMS, LrTransfer, ParamsError
from .optimum import BETA_AXIS, Landscape
from .table import validate_runs_table

# |corr(log N, log D)| above this (variance inflation above ~20) makes the N and D exponents unidentifiable.
COLLINEAR_CORR = 0.975
LOSS_LAW_MIN_SCALES = 6
HUBER_DELTA = 1e-3
INTEGER_HPARAMS = ("warmup", "batch_size")


def fit_scaling_laws(
    table: pd.DataFrame, sensitivity: dict[str, Any], *, loss_law: bool = True
) -> dict[str, Any]:
    """The scaling_law.json dict: a law per sensitive hyperparameter (from every row of the table, phase-1
    and law-phase), the constants for the rest, lr against width, and the loss law (loss_law=False skips
    it, the slow part, when only the hyperparameter laws are wanted).

    Reads only "sensitive" and "recommended" from `sensitivity`."""
    table = validate_runs_table(table)
    sensitive = list(sensitivity["sensitive"])
    land = Landscape.from_table(table, [h for h in dict.fromkeys([*sensitive, "lr"]) if h in table.columns])
    laws, unfitted = {}, {}
    for hparam in sensitive:
        points = optimum_points(land, hparam) if hparam in land.slices else pd.DataFrame()
        fitted = fit_hparam_law(hparam, points)
        if isinstance(fitted, str):
            unfitted[hparam] = fitted
        else:
            laws[hparam] = fitted
    return {
        "sensitive": sensitive,
        "laws": laws,
        "unfitted": unfitted,
        "constants": dict(sensitivity["recommended"]),
        "lr_width": lr_against_width(land) if land.slices.get("lr") else None,
        "loss_law": fit_loss_law(land.scales) if loss_law else {"form": None, "reason": "not requested"},
    }


def optimum_points(land: Landscape, hparam: str) -> pd.DataFrame:
    rows = []
    for scale, optimum in land.optima[hparam].items():
        info = land.scales.loc[scale]
        rows.append(
            {
                "scale": scale, "n_params": float(info["n_params"]), "tokens": float(info["tokens"]),
                "width": int(info["width"]), "value": optimum.refined, "at_edge": optimum.at_edge,
            }
        )
    return pd.DataFrame(rows)


def _transform(hparam: str, values: Any) -> np.ndarray:
    """The fitted quantity: log h, or log(1 - beta) for the betas."""
    values = np.asarray(values, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log1p(-values) if hparam in BETA_AXIS else np.log(values)


def _untransform(hparam: str, y: Any) -> np.ndarray:
    y = np.asarray(y, dtype=float)
    return -np.expm1(y) if hparam in BETA_AXIS else np.exp(y)


def _design(points: pd.DataFrame, kind: str) -> pd.DataFrame:
    log_n, log_d = np.log(points["n_params"].to_numpy(float)), np.log(points["tokens"].to_numpy(float))
    columns = {"log_prefactor": np.ones(len(points))}
    if kind == "N_D":
        columns |= {"N_exponent": log_n, "D_exponent": log_d}
    else:
        columns["C_exponent"] = np.log(6.0) + log_n + log_d
    return pd.DataFrame(columns)


def _ols(hparam: str, points: pd.DataFrame, kind: str):
    return sm.OLS(_transform(hparam, points["value"]), _design(points, kind)).fit()


def _collinear(x: Any, y: Any) -> bool:
    """Whether two regressors cannot be told apart: one is constant or they (nearly) move together."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    return bool(np.ptp(x) < 1e-9 or np.ptp(y) < 1e-9 or abs(np.corrcoef(x, y)[0, 1]) > COLLINEAR_CORR)


def _collinearity(points: pd.DataFrame) -> tuple[bool, float | None, float]:
    """Whether log N and log D are (nearly) collinear, their correlation, and the design's condition number."""
    log_n, log_d = np.log(points["n_params"].to_numpy(float)), np.log(points["tokens"].to_numpy(float))
    condition = float(np.linalg.cond(_design(points, "N_D").to_numpy()))
    constant = np.ptp(log_n) < 1e-9 or np.ptp(log_d) < 1e-9
    corr = None if constant else float(np.corrcoef(log_n, log_d)[0, 1])
    return _collinear(log_n, log_d), corr, condition


def fit_hparam_law(hparam: str, points: pd.DataFrame) -> dict[str, Any] | str:
    """The law for one hyperparameter from its optima per scale, or the reason it cannot be fitted."""
    if points.empty:
        return f"{hparam} was not swept at any scale of the table"
    valid = points[np.isfinite(_transform(hparam, points["value"]))].copy()
    notes = []
    if len(valid) < len(points):
        notes.append(f"{len(points) - len(valid)} optima <= 0 cannot enter a power law and were left out")
    interior = valid[~valid["at_edge"]]
    if len(interior) >= 3:
        used = interior
        if len(interior) < len(valid):
            edge = ", ".join(valid.loc[valid["at_edge"], "scale"])
            notes.append(f"optima at the grid edge ({edge}) are bounds, not optima, and were left out")
    else:
        used = valid
        if valid["at_edge"].any():
            notes.append("includes optima at the grid edge (bounds): widen the grid there")
    if len(used) < 3:
        return f"{hparam}: optima at only {len(used)} scales; a law needs 3 or more"

    if np.ptp(_design(used, "compute")["C_exponent"]) < 1e-9:
        return f"{hparam}: every scale has the same compute 6 N D; a law needs N or D to vary"
    collinear, corr, condition = _collinearity(used)
    kind = "N_D"
    if collinear:
        kind = "compute"
        together = "one of N and D is the same at every scale" if corr is None else (
            f"N and D move together in these scales (|corr(log N, log D)| = {abs(corr):.3f})"
        )
        notes.append(f"{together}, so their exponents cannot be separated: fell back to a compute-only law in C = 6 N D")
    elif len(used) < 4:
        kind = "compute"
        notes.append(f"only {len(used)} optima: too few for separate N and D exponents, fitted a compute-only law")

    result = _ols(hparam, used, kind)
    ci = result.conf_int(alpha=0.05)
    coefficients = {
        name: {"estimate": float(result.params[name]), "stderr": float(result.bse[name]),
               "ci95": [float(ci.loc[name, 0]), float(ci.loc[name, 1])]}
        for name in result.params.index
    }
    leverage = result.get_influence().hat_matrix_diag
    loo = np.asarray(result.resid) / (1.0 - leverage)
    used_scales = set(used["scale"])
    residuals = dict(zip(used["scale"], map(float, result.resid)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small-sample normality tests warn in the summary
        summary = result.summary().as_text()
    return {
        "form": _form(hparam, kind, coefficients),
        "kind": kind,
        "transform": "log(1 - h)" if hparam in BETA_AXIS else "log(h)",
        "coefficients": coefficients,
        "r2": float(result.rsquared),
        "n_points": len(used),
        "points": [
            {**{k: row[k] for k in ("scale", "n_params", "tokens", "width", "value", "at_edge")},
             "used": row["scale"] in used_scales, "residual": residuals.get(row["scale"])}
            for row in points.to_dict("records")
        ],
        "residuals": residuals,
        "loo_rmse": float(np.sqrt(np.mean(loo**2))) if np.all(leverage < 1 - 1e-9) else None,
        "collinear": collinear,
        "corr_log_n_log_d": corr,
        "condition_number": condition,
        "note": "; ".join(["OLS on one optimum per scale", *notes]) + ".",
        "summary": summary,
    }


def _form(hparam: str, kind: str, coefficients: dict[str, dict]) -> str:
    lhs = f"1 - {hparam}*" if hparam in BETA_AXIS else f"{hparam}*"
    prefactor = math.exp(coefficients["log_prefactor"]["estimate"])
    if kind == "N_D":
        b, c = coefficients["N_exponent"]["estimate"], coefficients["D_exponent"]["estimate"]
        return f"{lhs} = {prefactor:.4g} * N^{b:.4g} * D^{c:.4g}"
    return f"{lhs} = {prefactor:.4g} * C^{coefficients['C_exponent']['estimate']:.4g}  (C = 6 N D)"


def lr_against_width(land: Landscape) -> dict[str, Any]:
    """Optimal lr x width and lr x sqrt(width) per scale, and the fitted width exponent of lr* (with log D
    as a second regressor when data varies independently of width): -1 = inverse width, -0.5 = sqrt."""
    points = optimum_points(land, "lr").rename(columns={"value": "lr"})
    points["lr_x_width"] = points["lr"] * points["width"]
    points["lr_x_sqrt_width"] = points["lr"] * np.sqrt(points["width"])
    out: dict[str, Any] = {"points": points.to_dict("records"), "width_exponent": None}
    used = points[~points["at_edge"]] if (~points["at_edge"]).sum() >= 3 else points
    if used["width"].nunique() < 2 or len(used) < 3:
        out["note"] = "needs 3 or more scales and 2 or more widths to fit the width exponent"
        return out
    design = pd.DataFrame({"const": 1.0, "log_width": np.log(used["width"].astype(float))})
    log_d = np.log(used["tokens"])
    if len(used) >= 4 and not _collinear(design["log_width"], log_d):
        design["log_tokens"] = log_d
        out["note"] = "log lr* = a + s log width + c log D (OLS)"
    else:
        out["note"] = "log lr* = a + s log width (OLS; D constant or moving with width)"
    if len(used) < len(points):
        out["note"] += "; optima at the grid edge left out"
    result = sm.OLS(np.log(used["lr"]), design).fit()
    low, high = result.conf_int(alpha=0.05).loc["log_width"]
    out["width_exponent"] = {
        "estimate": float(result.params["log_width"]), "stderr": float(result.bse["log_width"]),
        "ci95": [float(low), float(high)],
        "inverse_width_in_ci": bool(low <= -1.0 <= high), "inverse_sqrt_width_in_ci": bool(low <= -0.5 <= high),
    }
    return out


# --- the loss law -------------------------------------------------------------------------------------------


def _loss_objective(
    theta: np.ndarray, x_n: np.ndarray, x_d: np.ndarray, log_loss: np.ndarray
) -> tuple[float, np.ndarray]:
    """Summed Huber loss of log L_pred - log L with its gradient; theta = (e, a, alpha, b, beta) and
    L_pred = exp(e) + exp(a - alpha x_n) + exp(b - beta x_d), with x_n, x_d = log N, log D centred (the
    centring keeps a and alpha from trading off against each other, which stalls the optimizer)."""
    e, a, alpha, b, beta = theta
    terms = np.stack([np.full_like(x_n, e), a - alpha * x_n, b - beta * x_d])
    top = terms.max(axis=0)
    log_pred = top + np.log(np.exp(terms - top).sum(axis=0))
    residual = log_pred - log_loss
    weights = np.exp(terms - log_pred)  # d log_pred / d term
    d_residual = np.clip(residual, -HUBER_DELTA, HUBER_DELTA)  # derivative of the Huber loss
    gradient = np.array([
        np.sum(d_residual * weights[0]),
        np.sum(d_residual * weights[1]),
        np.sum(d_residual * weights[1] * -x_n),
        np.sum(d_residual * weights[2]),
        np.sum(d_residual * weights[2] * -x_d),
    ])
    return float(np.sum(huber(HUBER_DELTA, residual))), gradient


def _loss_law_starts(n: np.ndarray, d: np.ndarray, loss: np.ndarray) -> list[np.ndarray]:
    """One start per (alpha, beta) on a grid, with E, A, B from non-negative least squares at those exponents
    (in the centred parameters: A / N^alpha = exp(a - alpha x_n) with x_n = log N - mean log N)."""
    starts = []
    n_rel, d_rel = n / np.exp(np.log(n).mean()), d / np.exp(np.log(d).mean())
    for alpha, beta in itertools.product((0.1, 0.3, 0.6, 1.0), repeat=2):
        basis = np.stack([np.ones_like(n), n_rel**-alpha, d_rel**-beta], axis=1)
        coefs = nnls(basis, loss)[0]
        e, a, b = np.log(np.maximum(coefs, 1e-6 * loss.min()))
        starts.append(np.array([e, a, alpha, b, beta]))
    return starts


def fit_loss_law(scales: pd.DataFrame) -> dict[str, Any]:
    """L(N, D) = E + A/N^alpha + B/D^beta on the best loss per scale, or the reason it was not fitted.
    Unbounded, as in the literature: a negative exponent is reported, not hidden."""
    n, d, loss = (scales[c].to_numpy(float) for c in ("n_params", "tokens", "best_loss"))
    if len(scales) < LOSS_LAW_MIN_SCALES:
        why = f"{len(scales)} scales; the loss law (5 parameters) needs {LOSS_LAW_MIN_SCALES} or more"
        return {"form": None, "reason": why}
    if _collinear(np.log(n), np.log(d)):
        why = "N and D do not vary independently across scales, so A/N^alpha and B/D^beta cannot be separated"
        return {"form": None, "reason": why}
    mean_n, mean_d = np.log(n).mean(), np.log(d).mean()
    args = (np.log(n) - mean_n, np.log(d) - mean_d, np.log(loss))
    # The summed Huber loss is tiny near the optimum: stop on the gradient, not on scipy's default scales.
    options = {"ftol": 1e-13, "gtol": 1e-10, "maxiter": 1000}
    fits = [minimize(_loss_objective, x0, args=args, jac=True, method="L-BFGS-B", options=options)
            for x0 in _loss_law_starts(n, d, loss)]
    best = min(fits, key=lambda f: f.fun)
    e, a, alpha, b, beta = best.x
    big_a, big_b = math.exp(a + alpha * mean_n), math.exp(b + beta * mean_d)
    predicted = np.exp(e) + big_a / n**alpha + big_b / d**beta
    form = f"L = {math.exp(e):.4g} + {big_a:.4g} / N^{alpha:.4g} + {big_b:.4g} / D^{beta:.4g}"
    # A term that contributes nothing at these scales, or a negative exponent, means the scales cannot
    # identify the law: the best fit is kept for inspection but not offered as a baseline.
    share_n, share_d = big_a / n**alpha / predicted, big_b / d**beta / predicted
    if alpha <= 0 or beta <= 0 or share_n.max() < 1e-3 or share_d.max() < 1e-3:
        why = (f"degenerate fit ({form}): these scales cannot separate the model and data terms; "
               "spread N and D further")
        return {"form": None, "reason": why, "rejected_form": form, "n_points": len(scales)}
    return {
        "form": form,
        "E": math.exp(e), "A": big_a, "alpha": float(alpha), "B": big_b, "beta": float(beta),
        "huber_delta": HUBER_DELTA, "objective": float(best.fun), "starts": len(fits),
        "rmse_log": float(np.sqrt(np.mean((np.log(predicted) - np.log(loss)) ** 2))),
        "n_points": len(scales),
        "points": [
            {"scale": s, "n_params": float(ni), "tokens": float(di), "loss": float(li), "predicted": float(pi)}
            for s, ni, di, li, pi in zip(scales.index, n, d, loss, predicted)
        ],
    }


# --- prediction ---------------------------------------------------------------------------------------------


def predict(law: dict[str, Any], n_params: float, tokens: float, width: int | None = None) -> dict[str, Any]:
    """A complete recommended hyperparameter set for N params and D tokens: fitted laws with 95% prediction
    intervals (statsmodels, refitted on the stored points), constants for the rest (moved to `width` when
    a width rule applies)."""
    for key in ("laws", "constants"):
        if not isinstance(law, dict) or key not in law:
            raise ParamsError(f"--law: missing key {key!r}; expected a scaling_law.json from `optsweep analyze`")
    values: dict[str, float | int | None] = {}
    intervals: dict[str, list[float]] = {}
    sources: dict[str, str] = {}
    notes: list[str] = []
    for hparam, fit in law["laws"].items():
        values[hparam], intervals[hparam], extrapolated = _predict_from_law(hparam, fit, n_params, tokens)
        sources[hparam] = fit["form"]
        if extrapolated:
            what = "N or D" if fit["kind"] == "N_D" else "compute"
            notes.append(f"{hparam}: {what} outside the fitted scales, extrapolated")
    for hparam, constant in law["constants"].items():
        rule = constant.get("rule", "none")
        factor = 1.0
        if rule != "none":
            if width is None:
                raise ParamsError(
                    f"{hparam} follows the {rule} rule from width {constant['reference_width']}: pass --width"
                )
            factor = LrTransfer(rule=rule, reference_width=constant["reference_width"]).factor(width)
        values[hparam] = _as_hparam(hparam, constant["value"] * factor)
        at_width = f" at width {constant['reference_width']}, {rule}" if rule != "none" else ""
        sources[hparam] = "constant" + at_width
    for hparam, why in law.get("unfitted", {}).items():
        values[hparam] = None
        sources[hparam] = f"no law: {why}"
    order = {h: i for i, h in enumerate(ALL_HPARAMS)}
    return {
        "n_params": n_params, "tokens": tokens, "width": width,
        "hparams": dict(sorted(values.items(), key=lambda item: order.get(item[0], len(order)))),
        "intervals": intervals,
        "sources": sources,
        "notes": notes,
    }


def _predict_from_law(
    hparam: str, fit: dict[str, Any], n_params: float, tokens: float
) -> tuple[float | int, list[float], bool]:
    """Estimate, 95% prediction interval and whether (N, D) lies outside the fitted points, from the OLS
    refitted on the law's stored points (the same numbers statsmodels gave when the law was fitted)."""
    used = pd.DataFrame([p for p in fit["points"] if p["used"]])
    result = _ols(hparam, used, fit["kind"])
    target = _design(pd.DataFrame({"n_params": [n_params], "tokens": [tokens]}), fit["kind"])
    row = result.get_prediction(target).summary_frame(alpha=0.05).iloc[0]
    interval = sorted(_untransform(hparam, [row["obs_ci_lower"], row["obs_ci_upper"]]).tolist())
    regressors, point = _design(used, fit["kind"]).iloc[:, 1:], target.iloc[0, 1:]
    extrapolated = bool(((point < regressors.min()) | (point > regressors.max())).any())
    return _as_hparam(hparam, float(_untransform(hparam, row["mean"]))), interval, extrapolated


def _as_hparam(hparam: str, value: float) -> float | int:
    return int(round(value)) if hparam in INTEGER_HPARAMS else float(value)
