"""Scaling laws: a power law in (N, D) for each sensitive hyperparameter (`law_fit`), lr against width, and
the loss law (`loss_law`), from one optimum per scale (several near-optimal runs of one scale are
correlated, so they would overstate the evidence), each with the standard error its slice fit gave.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import statsmodels.api as sm

from ..params.sections import AnalysisSettings
from ..results.documents import LawPhaseInputs, Provenance, ScalingLaws, SensitivityResult, stamped
from .law_fit import fit_hparam_law, law_axis_stderr, nearly_collinear
from .loss_law import fit_loss_law
from .optimum import WIDTH_RULES, Landscape
from .table import mark_blown_up, validate_runs_table

POOR_R2 = 0.5  # a law fitting worse than this is flagged: do not extrapolate it


def fit_scaling_laws(
    table: pd.DataFrame, sensitivity: SensitivityResult | LawPhaseInputs, *, loss_law: bool = True,
    settings: AnalysisSettings | None = None, provenance: Provenance | None = None,
) -> ScalingLaws:
    """The scaling_law.json document: a law per sensitive hyperparameter (and per `settings.laws_for`) from
    every row of the table, phase-1 and law-phase, the constants for the rest, lr against width beside the
    width rule the sensitivity used, and the loss law (loss_law=False skips it, the slow part); it carries
    `provenance` (None: this call's, with no params hash).

    Reads the sensitive hyperparameters and the constants of `sensitivity`, and of a full `SensitivityResult`
    also its verdicts (which were judged and left without a law) and the width rule it chose for lr."""
    settings = settings or AnalysisSettings()
    table = mark_blown_up(validate_runs_table(table), settings.divergence_rise)
    sensitive = list(sensitivity.sensitive)
    asked = [h for h in settings.laws_for if h in table.columns and h not in sensitive]
    wanted = [*sensitive, *asked]
    hparams = [h for h in dict.fromkeys([*wanted, "lr"]) if h in table.columns]
    land = Landscape.from_table(table, hparams, settings)
    laws, unfitted = {}, {}
    for hparam in wanted:
        points = optimum_points(land, hparam) if land.slices.get(hparam) else pd.DataFrame()
        fitted = fit_hparam_law(hparam, points)
        if isinstance(fitted, str):
            unfitted[hparam] = fitted
        else:
            laws[hparam] = fitted | ({"asked": True} if hparam in asked else {})
    verdicts = sensitivity.hyperparameters if isinstance(sensitivity, SensitivityResult) else {}
    skipped = {
        h: f"{v.verdict}: no law fitted (list it in analysis.laws_for to fit one anyway)"
        for h, v in verdicts.items() if v.verdict != "sensitive" and h not in laws
    }
    lr_rule = verdicts["lr"].evidence.width_rule if "lr" in verdicts else None
    constants = {h: c for h, c in sensitivity.recommended.items() if h not in laws}
    content = {
        "sensitive": sensitive,
        "laws": laws,
        "unfitted": unfitted,
        "skipped": skipped,
        "constants": constants,
        "lr_width": lr_against_width(land, lr_rule) if land.slices.get("lr") else None,
        "loss_law": fit_loss_law(land.scales) if loss_law else {"form": None, "reason": "not requested"},
    }
    content["warnings"] = law_warnings(content)
    return stamped(ScalingLaws, content, provenance or Provenance.now())


def law_warnings(laws: dict[str, Any]) -> list[str]:
    """A warning for each law that fits poorly (low R^2, or an exponent whose interval spans 0), from the
    laws as fitted (before they are validated into the document, which carries the warnings)."""
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
                # a censored optimum enters the law as its bound, so its error is carried there
                "stderr": float(law_axis_stderr(hparam, optimum.bound if optimum.edge else optimum.refined,
                                                optimum.stderr)),
                "natural_stderr": optimum.stderr,
            }
        )
    return pd.DataFrame(rows)


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
    if len(used) >= 4 and not nearly_collinear(design["log_width"], log_d):
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


