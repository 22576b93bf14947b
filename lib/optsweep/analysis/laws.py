"""Scaling laws: a power law in (N, D) for each sensitive hyperparameter, lr against width, and the loss law.

Hyperparameter laws: log h* = a + b log N + c log D (on 1 - beta for the betas) on one optimum per scale
(several near-optimal runs of one scale are correlated, so they would overstate the evidence), each
optimum weighted by its standard error (statsmodels WLS), so a law's intervals reflect how well each optimum
is known. An optimum at a grid edge is a censored observation (the true optimum lies at or beyond the edge)
and enters a censored-likelihood fit (a Tobit model on statsmodels' `GenericLikelihoodModel`) instead of
being dropped. Four forms are compared where the design allows (N and D, N only, D only, compute C = 6 N D
only), each with its leave-one-out error, and the best by that error (the simplest within 10% of it) is the
law; when N and D move together only the compute form can be fitted, saying so.

Loss law: L(N, D) = E + A / N^alpha + B / D^beta on the best loss per scale, Huber loss on log L, scipy
L-BFGS-B from a grid of starts (Hoffmann et al. 2022; Besiroglu et al. 2024); rejected, with the reason, when
E is not between 0 and the lowest observed loss (with margin) or an exponent lies outside (0, 2).
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy.optimize import minimize, nnls
from scipy.special import huber
from scipy.stats import norm, t
from statsmodels.base.model import GenericLikelihoodModel

from ..axes import axis_of, from_axis, to_axis
from ..config import AnalysisSettings, LrTransfer, ParamsError
from ..optimizers import BUILT_IN
from .optimum import WIDTH_RULES, Landscape
from .table import hparam_names, mark_blown_up, validate_runs_table

# |corr(log N, log D)| above this (variance inflation above ~20) makes the N and D exponents unidentifiable.
COLLINEAR_CORR = 0.975
LOSS_LAW_MIN_SCALES = 6
HUBER_DELTA = 1e-3
# Predicted as whole numbers: batch size and every built-in optimizer's integer hyperparameters (warmup, ...).
INTEGER_HPARAMS = ("batch_size", *sorted({h.name for p in BUILT_IN.values() for h in p.hparams.values() if h.integer}))
# The regressors of each law form, simplest forms first (they win ties on leave-one-out error).
FORMS: dict[str, tuple[str, ...]] = {
    "compute": ("C_exponent",), "N": ("N_exponent",), "D": ("D_exponent",), "N_D": ("N_exponent", "D_exponent"),
}
SIGMA_FLOOR = 1e-6  # residual std floor of a censored fit (on log h): noise-free optima would drive it to 0
LOO_TOLERANCE = 0.10  # a simpler form within 10% of the best leave-one-out error is preferred
POOR_R2 = 0.5
LOSS_LAW_E_MARGIN = (0.01, 0.99)  # E must lie in (1%, 99%) of the lowest observed loss


def fit_scaling_laws(
    table: pd.DataFrame, sensitivity: dict[str, Any], *, loss_law: bool = True,
    settings: AnalysisSettings | None = None,
) -> dict[str, Any]:
    """The scaling_law.json dict: a law per sensitive hyperparameter (and per `settings.laws_for`) from every
    row of the table, phase-1 and law-phase, the constants for the rest, lr against width beside the width
    rule the sensitivity used, and the loss law (loss_law=False skips it, the slow part).

    Reads "sensitive", "recommended" and (when present) "hyperparameters" from `sensitivity`."""
    settings = settings or AnalysisSettings()
    table = mark_blown_up(validate_runs_table(table), settings.divergence_rise)
    sensitive = list(sensitivity["sensitive"])
    asked = [h for h in settings.laws_for if h in table.columns and h not in sensitive]
    wanted = [*sensitive, *asked]
    land = Landscape.from_table(table, [h for h in dict.fromkeys([*wanted, "lr"]) if h in table.columns])
    laws, unfitted = {}, {}
    for hparam in wanted:
        points = optimum_points(land, hparam) if land.slices.get(hparam) else pd.DataFrame()
        fitted = fit_hparam_law(hparam, points)
        if isinstance(fitted, str):
            unfitted[hparam] = fitted
        else:
            laws[hparam] = fitted | ({"asked": True} if hparam in asked else {})
    verdicts = sensitivity.get("hyperparameters", {})
    skipped = {
        h: f"{v['verdict']}: no law fitted (list it in analysis.laws_for to fit one anyway)"
        for h, v in verdicts.items() if v.get("verdict", "sensitive") != "sensitive" and h not in laws
    }
    lr_rule = verdicts.get("lr", {}).get("evidence", {}).get("width_rule")
    constants = {h: c for h, c in sensitivity["recommended"].items() if h not in laws}
    out = {
        "sensitive": sensitive,
        "laws": laws,
        "unfitted": unfitted,
        "skipped": skipped,
        "constants": constants,
        "lr_width": lr_against_width(land, lr_rule) if land.slices.get("lr") else None,
        "loss_law": fit_loss_law(land.scales) if loss_law else {"form": None, "reason": "not requested"},
    }
    out["warnings"] = law_warnings(out)
    return out


def law_warnings(laws: dict[str, Any]) -> list[str]:
    """A warning for each law that fits poorly (low R^2, or an exponent whose interval spans 0)."""
    found = []
    for hparam, law in laws["laws"].items():
        if law["r2"] is not None and law["r2"] < POOR_R2:
            found.append(f"law: {hparam} fits poorly (R^2 {law['r2']:.2f} < {POOR_R2}): do not extrapolate it")
        for name, c in law["coefficients"].items():
            if name != "log_prefactor" and c["ci95"][0] <= 0 <= c["ci95"][1]:
                found.append(f"law: {hparam}'s {name.replace('_', ' ')} interval [{c['ci95'][0]:.3g}, "
                             f"{c['ci95'][1]:.3g}] spans 0: the data do not say which way it moves")
    if laws["loss_law"].get("rejected_form"):
        found.append(f"loss law rejected: {laws['loss_law']['reason']}")
    return found


def optimum_points(land: Landscape, hparam: str) -> pd.DataFrame:
    """One optimum per scale with its standard error on the law's axis and its censoring (edge optima)."""
    rows = []
    for scale, optimum in land.optima[hparam].items():
        info = land.scales.loc[scale]
        rows.append(
            {
                "scale": scale, "n_params": float(info["n_params"]), "tokens": float(info["tokens"]),
                "width": int(info["width"]), "value": optimum.refined, "at_edge": optimum.at_edge,
                "edge": optimum.edge, "bound": optimum.bound, "estimate": optimum.estimate,
                "stderr": _stderr_on_law_axis(hparam, optimum.refined, optimum.stderr),
            }
        )
    return pd.DataFrame(rows)


def _stderr_on_law_axis(hparam: str, value: float, stderr: float) -> float:
    """A standard error on the hyperparameter's natural axis, carried to the law's axis (delta method)."""
    x = float(to_axis(hparam, value))
    h = 1e-6 * max(1.0, abs(x))
    ends = _transform(hparam, from_axis(hparam, np.array([x - h, x + h])))
    slope = abs(float(ends[1] - ends[0]) / (2 * h))
    return stderr * slope if np.isfinite(slope) else math.nan


def _transform(hparam: str, values: Any) -> np.ndarray:
    """The fitted quantity: log h, or log(1 - beta) for the betas."""
    values = np.asarray(values, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log1p(-values) if axis_of(hparam) == "log1m" else np.log(values)


def _untransform(hparam: str, y: Any) -> np.ndarray:
    y = np.asarray(y, dtype=float)
    return -np.expm1(y) if axis_of(hparam) == "log1m" else np.exp(y)


def _censoring(hparam: str, edge: str | float | None) -> int:
    """+1: the law's y lies at or above the bound; -1: at or below; 0: observed (edge None or NaN)."""
    if not isinstance(edge, str):
        return 0
    up = 1 if edge == "above" else -1
    return -up if axis_of(hparam) == "log1m" else up  # log(1 - beta) falls as beta rises


def _design(points: pd.DataFrame, kind: str) -> pd.DataFrame:
    log_n, log_d = np.log(points["n_params"].to_numpy(float)), np.log(points["tokens"].to_numpy(float))
    columns = {"log_prefactor": np.ones(len(points))}
    regressors = {"N_exponent": log_n, "D_exponent": log_d, "C_exponent": np.log(6.0) + log_n + log_d}
    columns |= {name: regressors[name] for name in FORMS[kind]}
    return pd.DataFrame(columns)


class CensoredPowerLaw(GenericLikelihoodModel):
    """y = X beta + e, e ~ N(0, tau^2 + se_i^2): each optimum's own standard error se_i (known from the
    measured noise) plus the law's misfit tau (estimated); a censored point only says y >= (or <=) its value.
    Absolute errors, not relative weights: with few observed optima a free overall scale would be estimated
    far too small, and the intervals with it."""

    def __init__(self, endog, exog, stderr: np.ndarray, censored: np.ndarray, **kwargs):
        super().__init__(endog, exog, **kwargs)
        self.stderr, self.censored = stderr, censored
        self.exog_names.append("log_tau")
        self.k_extra = 1
        self.nparams = exog.shape[1] + 1
        self.df_model = exog.shape[1] - 1
        self.df_resid = len(endog) - self.nparams

    def loglikeobs(self, params: np.ndarray) -> np.ndarray:
        beta, tau = params[:-1], np.hypot(np.exp(params[-1]), SIGMA_FLOOR)
        scale = np.hypot(tau, self.stderr)
        z = (self.endog - self.exog @ beta) / scale
        return np.where(
            self.censored == 0, norm.logpdf(z) - np.log(scale),
            np.where(self.censored > 0, norm.logsf(z), norm.logcdf(z)),
        )


@dataclass
class LawFit:
    """One fitted form: coefficients with covariance, residual std (for an optimum of average standard
    error), degrees of freedom for intervals (None: normal, from a likelihood fit), and the statsmodels
    result for its summary."""

    kind: str
    params: pd.Series
    covariance: pd.DataFrame
    residual_std: float
    df_resid: int | None
    method: str
    result: Any

    def quantile(self) -> float:
        return float(t.ppf(0.975, self.df_resid)) if self.df_resid else float(norm.ppf(0.975))

    def predict(self, design: pd.DataFrame) -> np.ndarray:
        return design[self.params.index].to_numpy() @ self.params.to_numpy()


def _relative_stderr(points: pd.DataFrame) -> np.ndarray:
    """Each optimum's standard error over their geometric mean (WLS weights are 1 / this squared); a
    missing or zero error gets the smallest positive one."""
    se = points["stderr"].to_numpy(float)
    positive = se[np.isfinite(se) & (se > 0)]
    if not len(positive):
        return np.ones(len(se))
    se = np.where(np.isfinite(se) & (se > 0), se, positive.min())
    return se / np.exp(np.log(se).mean())


def _fit_form(hparam: str, points: pd.DataFrame, kind: str) -> LawFit:
    censored = np.array([_censoring(hparam, e) for e in points["edge"]])
    y = _transform(hparam, np.where(censored != 0, points["bound"], points["value"]))
    design = _design(points, kind)
    rel = _relative_stderr(points)
    observed = censored == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an exact start (no residual left among the observed) is fine here
        wls = sm.WLS(y[observed], design[observed], weights=1.0 / rel[observed] ** 2).fit()
    if not censored.any():
        return LawFit(kind, wls.params, wls.cov_params(), float(np.sqrt(wls.scale)), int(wls.df_resid), "WLS", wls)
    stderr = np.nan_to_num(points["stderr"].to_numpy(float), nan=0.0)
    model = CensoredPowerLaw(y, design, stderr, censored)
    start = np.append(wls.params.to_numpy(), np.log(max(float(np.std(wls.resid)), SIGMA_FLOOR)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter from the optimizer
        result = model.fit(start_params=start, method="nm", maxiter=4000, disp=False)
        result = model.fit(start_params=result.params, method="bfgs", maxiter=1000, disp=False)
    names = list(design.columns)
    params = pd.Series(result.params[:-1], index=names)
    # the inverse observed information (pinv: a direction the data leave flat gets no finite variance claim)
    information = -np.asarray(model.hessian(result.params))
    inverse = np.linalg.pinv(information) if np.isfinite(information).all() else np.full_like(information, np.nan)
    covariance = pd.DataFrame(inverse[:-1, :-1], index=names, columns=names)
    # a new optimum's spread: the misfit plus a typical optimum's own error
    spread = float(np.hypot(np.hypot(np.exp(result.params[-1]), SIGMA_FLOOR), np.median(stderr[censored == 0])))
    return LawFit(kind, params, covariance, spread, None, "censored MLE (Tobit)", result)


def _loo_rmse(hparam: str, points: pd.DataFrame, kind: str) -> float | None:
    """Leave-one-out error over the observed (not censored) optima: refit without each, predict it."""
    errors = []
    y = _transform(hparam, points["value"])
    if points["edge"].isna().all():  # WLS: the closed form, residual / (1 - leverage) on the weighted design
        if not _enough(points.iloc[1:], kind):
            return None
        weighted = _design(points, kind).to_numpy() / _relative_stderr(points)[:, None]
        leverage = np.einsum("ij,ij->i", weighted @ np.linalg.pinv(weighted.T @ weighted), weighted)
        if np.any(leverage > 1 - 1e-9):
            return None
        fit = _fit_form(hparam, points, kind)
        return float(np.sqrt(np.mean(((y - fit.predict(_design(points, kind))) / (1 - leverage)) ** 2)))
    for i in np.flatnonzero(points["edge"].isna().to_numpy()):
        rest = points.drop(index=points.index[i])
        if not _enough(rest, kind):
            return None
        fit = _fit_form(hparam, rest, kind)
        errors.append(float(fit.predict(_design(points.iloc[[i]], kind))[0] - y[i]))
    return float(np.sqrt(np.mean(np.square(errors)))) if errors else None


def _enough(points: pd.DataFrame, kind: str) -> bool:
    """Whether a form can be fitted with a residual left over: as many observed optima as coefficients, and
    one more optimum (observed or censored) for the residual std."""
    coefficients = len(FORMS[kind]) + 1
    return int(points["edge"].isna().sum()) >= coefficients and len(points) >= coefficients + 1


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


def _allowed_forms(used: pd.DataFrame, collinear: bool) -> tuple[list[str], list[str]]:
    """The forms this design can fit, and notes on the ones it cannot."""
    if collinear:
        return ["compute"], []
    forms, notes = ["compute", "N", "D"], []
    if _enough(used, "N_D"):
        forms.append("N_D")
    else:
        notes.append(f"only {int(used['edge'].isna().sum())} optima inside the grid: too few for separate N and D "
                     "exponents")
    return forms, notes


def fit_hparam_law(hparam: str, points: pd.DataFrame) -> dict[str, Any] | str:
    """The law for one hyperparameter from its optima per scale, or the reason it cannot be fitted."""
    if points.empty:
        return f"{hparam} was not swept at any scale of the table"
    used = points[np.isfinite(_transform(hparam, points["value"]))].reset_index(drop=True)
    notes = []
    if len(used) < len(points):
        notes.append(f"{len(points) - len(used)} optima <= 0 cannot enter a power law and were left out")
    observed = int(used["edge"].isna().sum())
    if not _enough(used, "compute") or len(used) < 3:
        return f"{hparam}: optima at {len(used)} scales ({observed} inside the grid); a law needs 3 or more, 2 inside"
    if used["edge"].notna().any():
        edge = ", ".join(used.loc[used["edge"].notna(), "scale"])
        notes.append(f"optima at the grid edge ({edge}) enter as censored observations (bounds)")
    if np.ptp(_design(used, "compute")["C_exponent"]) < 1e-9:
        return f"{hparam}: every scale has the same compute 6 N D; a law needs N or D to vary"
    collinear, corr, condition = _collinearity(used)
    if collinear:
        together = "one of N and D is the same at every scale" if corr is None else (
            f"N and D move together in these scales (|corr(log N, log D)| = {abs(corr):.3f})"
        )
        notes.append(f"{together}, so their exponents cannot be separated: fell back to a compute-only law in "
                     "C = 6 N D")
    kinds, form_notes = _allowed_forms(used, collinear)
    notes += form_notes

    forms = {}
    for kind in kinds:
        fit = _fit_form(hparam, used, kind)
        forms[kind] = {"fit": fit, "loo_rmse": _loo_rmse(hparam, used, kind)}
    kind = _best_form(forms)
    fit = forms[kind]["fit"]
    if len(kinds) > 1:
        notes.append(f"form {kind} chosen by leave-one-out error among {', '.join(kinds)}")
    y = _transform(hparam, used["value"])
    predicted = fit.predict(_design(used, kind))
    residuals = dict(zip(used["scale"], map(float, y - predicted)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small-sample normality tests warn in the summary
        summary = fit.result.summary().as_text()
    return {
        "form": _form(hparam, kind, fit.params),
        "kind": kind,
        "transform": "log(1 - h)" if axis_of(hparam) == "log1m" else "log(h)",
        "method": fit.method,
        "coefficients": _coefficients(fit),
        "covariance": fit.covariance.to_numpy().tolist(),
        "residual_std": fit.residual_std,
        "df_resid": fit.df_resid,
        "r2": _r2(y, predicted, used),
        "n_points": len(used),
        "n_censored": int(used["edge"].notna().sum()),
        "points": [
            {**{k: row[k] for k in ("scale", "n_params", "tokens", "width", "value", "at_edge", "edge", "bound",
                                    "estimate", "stderr")},
             "used": row["scale"] in residuals, "residual": residuals.get(row["scale"])}
            for row in points.to_dict("records")
        ],
        "residuals": residuals,
        "loo_rmse": forms[kind]["loo_rmse"],
        "forms": {
            k: {"form": _form(hparam, k, f["fit"].params), "loo_rmse": f["loo_rmse"],
                "coefficients": _coefficients(f["fit"])}
            for k, f in forms.items()
        },
        "collinear": collinear,
        "corr_log_n_log_d": corr,
        "condition_number": condition,
        "note": "; ".join([f"{fit.method} on one optimum per scale, weighted by its standard error", *notes]) + ".",
        "summary": summary,
    }


def _best_form(forms: dict[str, dict[str, Any]]) -> str:
    """The simplest form whose leave-one-out error is within `LOO_TOLERANCE` of the best (forms without one
    lose to forms with one; with none anywhere, the richest form that could be fitted)."""
    scored = {k: f["loo_rmse"] for k, f in forms.items() if f["loo_rmse"] is not None}
    if not scored:
        return list(forms)[-1]
    best = min(scored.values())
    return next(k for k in forms if k in scored and scored[k] <= best * (1 + LOO_TOLERANCE) + 1e-9)


def _coefficients(fit: LawFit) -> dict[str, dict[str, Any]]:
    q = fit.quantile()
    out = {}
    for name, estimate in fit.params.items():
        stderr = float(np.sqrt(max(fit.covariance.loc[name, name], 0.0)))
        out[name] = {"estimate": float(estimate), "stderr": stderr,
                     "ci95": [float(estimate - q * stderr), float(estimate + q * stderr)]}
    return out


def _r2(y: np.ndarray, predicted: np.ndarray, points: pd.DataFrame) -> float | None:
    """R^2 over the observed (not censored) optima, weighted like the fit."""
    observed = points["edge"].isna().to_numpy()
    if observed.sum() < 2:
        return None
    w = 1.0 / _relative_stderr(points)[observed] ** 2
    yo = y[observed]
    mean = np.average(yo, weights=w)
    total = float(np.sum(w * (yo - mean) ** 2))
    return float(1 - np.sum(w * (yo - predicted[observed]) ** 2) / total) if total > 0 else None


def _form(hparam: str, kind: str, params: pd.Series) -> str:
    lhs = f"1 - {hparam}*" if axis_of(hparam) == "log1m" else f"{hparam}*"
    prefactor = float(np.exp(params["log_prefactor"]))
    terms = {"N_exponent": "N", "D_exponent": "D", "C_exponent": "C"}
    powers = " * ".join(f"{terms[name]}^{params[name]:.4g}" for name in FORMS[kind])
    return f"{lhs} = {prefactor:.4g} * {powers}" + ("  (C = 6 N D)" if kind == "compute" else "")


def lr_against_width(land: Landscape, rule: str | None = None) -> dict[str, Any]:
    """Optimal lr x width and lr x sqrt(width) per scale, and the fitted width exponent of lr* (with log D
    as a second regressor when data varies independently of width): -1 = inverse width, -0.5 = sqrt. The
    width rule the sensitivity chose (`rule`) is reported beside it, with whether the fit agrees."""
    points = optimum_points(land, "lr").rename(columns={"value": "lr"})
    points["lr_x_width"] = points["lr"] * points["width"]
    points["lr_x_sqrt_width"] = points["lr"] * np.sqrt(points["width"])
    out: dict[str, Any] = {"points": points.to_dict("records"), "width_exponent": None, "sensitivity_rule": rule}
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
    if rule is not None:
        exponent = -WIDTH_RULES[rule]
        agrees = bool(low <= exponent <= high)
        out["sensitivity_rule_exponent"] = exponent
        out["agrees"] = agrees
        out["note"] += (
            f"; the sensitivity's rule ({rule.replace('_', ' ')}, exponent {exponent:g}) "
            + ("lies inside the fitted interval" if agrees else
               f"lies outside the fitted interval [{low:.3g}, {high:.3g}]: the rule is the best of three fixed "
               "choices by regret, the fit the exponent the optima follow")
        )
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
    # A term that contributes nothing at these scales, an irreducible loss at 0 or above the data, or an
    # exponent outside (0, 2) means the scales cannot identify the law: the best fit is kept for inspection
    # but not offered as a baseline.
    share_n, share_d = big_a / n**alpha / predicted, big_b / d**beta / predicted
    why = _loss_law_problem(math.exp(e), float(loss.min()), alpha, beta, share_n.max(), share_d.max())
    if why:
        return {"form": None, "reason": f"degenerate fit ({form}): {why}", "rejected_form": form,
                "n_points": len(scales)}
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


def _loss_law_problem(
    e: float, lowest: float, alpha: float, beta: float, share_n: float, share_d: float
) -> str | None:
    low, high = LOSS_LAW_E_MARGIN
    if not low * lowest < e < high * lowest:
        return (f"irreducible loss E = {e:.3g} is not between {low:g} and {high:g} x the lowest observed loss "
                f"({lowest:.4g})")
    if not (0 < alpha < 2 and 0 < beta < 2):
        return f"exponents alpha = {alpha:.3g}, beta = {beta:.3g} are not both in (0, 2)"
    if share_n < 1e-3 or share_d < 1e-3:
        return "these scales cannot separate the model and data terms; spread N and D further"
    return None


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
            what = {"N_D": "N or D", "N": "N", "D": "D"}.get(fit["kind"], "compute")
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
    order = {h: i for i, h in enumerate(hparam_names())}
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
    """Estimate, 95% prediction interval (for an optimum of average standard error) and whether (N, D) lies
    outside the fitted points, from the law's stored coefficients and their covariance."""
    names = list(fit["coefficients"])
    beta = np.array([fit["coefficients"][name]["estimate"] for name in names])
    target = _design(pd.DataFrame({"n_params": [n_params], "tokens": [tokens]}), fit["kind"])[names].to_numpy()[0]
    mean = float(target @ beta)
    spread = math.sqrt(float(target @ np.asarray(fit["covariance"]) @ target) + fit["residual_std"] ** 2)
    q = float(t.ppf(0.975, fit["df_resid"])) if fit["df_resid"] else float(norm.ppf(0.975))
    interval = sorted(_untransform(hparam, [mean - q * spread, mean + q * spread]).tolist())
    used = pd.DataFrame([p for p in fit["points"] if p["used"]])
    regressors = _design(used, fit["kind"])[names[1:]]
    point = pd.Series(target[1:], index=names[1:])
    extrapolated = bool(((point < regressors.min() - 1e-9) | (point > regressors.max() + 1e-9)).any())
    return _as_hparam(hparam, float(_untransform(hparam, mean))), interval, extrapolated


def _as_hparam(hparam: str, value: float) -> float | int:
    return int(round(value)) if hparam in INTEGER_HPARAMS else float(value)
