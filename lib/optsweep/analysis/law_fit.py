"""Fitting one hyperparameter's law: log h* = a + b log N + c log D (on 1 - beta for the betas) on one
optimum per scale, weighted by each optimum's standard error (statsmodels WLS), or, when some optima are
censored at a grid edge, a censored-likelihood (Tobit) fit on statsmodels' `GenericLikelihoodModel`. Four
forms are compared where the design allows (N and D, N only, D only, compute C = 6 N D only), each with its
leave-one-out error, and the best by that error (the simplest within 10% of it) is the law; when N and D move
together only the compute form can be fitted, saying so.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy.stats import norm, t
from statsmodels.base.model import GenericLikelihoodModel

from ..axes import axis_of, from_axis, to_axis

# |corr(log N, log D)| above this (variance inflation above ~20) makes the N and D exponents unidentifiable.
COLLINEAR_CORR = 0.975
# The regressors of each law form, simplest forms first (they win ties on leave-one-out error).
FORMS: dict[str, tuple[str, ...]] = {
    "compute": ("C_exponent",), "N": ("N_exponent",), "D": ("D_exponent",), "N_D": ("N_exponent", "D_exponent"),
}
# Natural axes that are the law's own axis (log h, log(1 - beta)): an optimum's error is the same on both.
LAW_AXES = ("log", "log1m")
REWEIGHTS = 2  # refits with the errors carried at the law's value (the weights settle after one or two)
SIGMA_FLOOR = 1e-6  # residual std floor of a censored fit (on log h): noise-free optima would drive it to 0
LOO_TOLERANCE = 0.10  # a simpler form within 10% of the best leave-one-out error is preferred


def transform(hparam: str, values: Any) -> np.ndarray:
    """The fitted quantity: log h, or log(1 - beta) for the betas."""
    values = np.asarray(values, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log1p(-values) if axis_of(hparam) == "log1m" else np.log(values)


def untransform(hparam: str, y: Any) -> np.ndarray:
    y = np.asarray(y, dtype=float)
    return -np.expm1(y) if axis_of(hparam) == "log1m" else np.exp(y)


def law_axis_stderr(hparam: str, value: Any, natural_stderr: Any) -> np.ndarray:
    """A standard error on the hyperparameter's natural axis, carried to the law's axis at `value` (delta
    method; NaN where the law's axis has no finite slope, e.g. weight decay 0)."""
    x = to_axis(hparam, value)
    h = 1e-6 * np.maximum(1.0, np.abs(x))
    with np.errstate(divide="ignore", invalid="ignore"):
        ends = transform(hparam, from_axis(hparam, x + h)), transform(hparam, from_axis(hparam, x - h))
        slope = np.abs(ends[0] - ends[1]) / (2 * h)
    return np.where(np.isfinite(slope), np.asarray(natural_stderr, dtype=float) * slope, np.nan)


def law_axis_y(hparam: str, points: pd.DataFrame) -> np.ndarray:
    """What each optimum says on the law's axis: its value, or for one censored at the grid edge its bound.
    A weight decay optimum at the grid's 0 is a bound (below the midpoint to the next value), not a value
    log cannot take: dropping it would leave out exactly the smallest optima and bias the law."""
    censored = np.array([_censoring(hparam, e) for e in points["edge"]])
    return transform(hparam, np.where(censored != 0, points["bound"], points["value"]))


def _censoring(hparam: str, edge: str | float | None) -> int:
    """+1: the law's y lies at or above the bound; -1: at or below; 0: observed (edge None or NaN)."""
    if not isinstance(edge, str):
        return 0
    up = 1 if edge == "above" else -1
    return -up if axis_of(hparam) == "log1m" else up  # log(1 - beta) falls as beta rises


def design_matrix(points: pd.DataFrame, kind: str) -> pd.DataFrame:
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
    """The form's fit. Where the law's axis is not the natural one (log of a weight decay fitted on its linear
    axis), an optimum's error on the law's axis depends on where it lies: carried at its own noisy estimate it
    would give the optima that came out high the most weight (a low one's log has the larger error), so the
    errors are carried at the fitted law's value instead and the fit repeated (reweighting as in IRLS)."""
    fit = _fit_weighted(hparam, points, kind)
    if axis_of(hparam) in LAW_AXES:
        return fit
    for _ in range(REWEIGHTS):
        at_law = untransform(hparam, fit.predict(design_matrix(points, kind)))
        fit = _fit_weighted(hparam, points.assign(stderr=law_axis_stderr(hparam, at_law, points["natural_stderr"])),
                            kind)
    return fit


def _fit_weighted(hparam: str, points: pd.DataFrame, kind: str) -> LawFit:
    censored = np.array([_censoring(hparam, e) for e in points["edge"]])
    y = law_axis_y(hparam, points)
    design = design_matrix(points, kind)
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
    y = transform(hparam, points["value"])
    if points["edge"].isna().all():  # WLS: the closed form, residual / (1 - leverage) on the weighted design
        if not _enough(points.iloc[1:], kind):
            return None
        weighted = design_matrix(points, kind).to_numpy() / _relative_stderr(points)[:, None]
        leverage = np.einsum("ij,ij->i", weighted @ np.linalg.pinv(weighted.T @ weighted), weighted)
        if np.any(leverage > 1 - 1e-9):
            return None
        fit = _fit_form(hparam, points, kind)
        return float(np.sqrt(np.mean(((y - fit.predict(design_matrix(points, kind))) / (1 - leverage)) ** 2)))
    for i in np.flatnonzero(points["edge"].isna().to_numpy()):
        rest = points.drop(index=points.index[i])
        if not _enough(rest, kind):
            return None
        fit = _fit_form(hparam, rest, kind)
        errors.append(float(fit.predict(design_matrix(points.iloc[[i]], kind))[0] - y[i]))
    return float(np.sqrt(np.mean(np.square(errors)))) if errors else None


def _enough(points: pd.DataFrame, kind: str) -> bool:
    """Whether a form can be fitted with a residual left over: as many observed optima as coefficients, and
    one more optimum (observed or censored) for the residual std."""
    coefficients = len(FORMS[kind]) + 1
    return int(points["edge"].isna().sum()) >= coefficients and len(points) >= coefficients + 1


def nearly_collinear(x: Any, y: Any) -> bool:
    """Whether two regressors cannot be told apart: one is constant or they (nearly) move together."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    return bool(np.ptp(x) < 1e-9 or np.ptp(y) < 1e-9 or abs(np.corrcoef(x, y)[0, 1]) > COLLINEAR_CORR)


def _collinearity(points: pd.DataFrame) -> tuple[bool, float | None, float]:
    """Whether log N and log D are (nearly) collinear, their correlation, and the design's condition number."""
    log_n, log_d = np.log(points["n_params"].to_numpy(float)), np.log(points["tokens"].to_numpy(float))
    condition = float(np.linalg.cond(design_matrix(points, "N_D").to_numpy()))
    constant = np.ptp(log_n) < 1e-9 or np.ptp(log_d) < 1e-9
    corr = None if constant else float(np.corrcoef(log_n, log_d)[0, 1])
    return nearly_collinear(log_n, log_d), corr, condition


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
    used = points[np.isfinite(law_axis_y(hparam, points))].reset_index(drop=True)
    notes = []
    if len(used) < len(points):
        notes.append(f"{len(points) - len(used)} optima <= 0 inside the grid cannot enter a power law and were left "
                     "out")
    observed = int(used["edge"].isna().sum())
    if not _enough(used, "compute") or len(used) < 3:
        return f"{hparam}: optima at {len(used)} scales ({observed} inside the grid); a law needs 3 or more, 2 inside"
    if used["edge"].notna().any():
        edge = ", ".join(used.loc[used["edge"].notna(), "scale"])
        notes.append(f"optima at the grid edge ({edge}) enter as censored observations (bounds)")
    if np.ptp(design_matrix(used, "compute")["C_exponent"]) < 1e-9:
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
    y = transform(hparam, used["value"])
    predicted = fit.predict(design_matrix(used, kind))
    residuals = {scale: float(r) for scale, r in zip(used["scale"], y - predicted) if np.isfinite(r)}
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
             "used": row["scale"] in set(used["scale"]), "residual": residuals.get(row["scale"])}
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


