"""Which hyperparameters are sensitive to scale (the brief's two standards), and what causes a shift.

Runs that blew up (a finite loss far above their scale's best) are marked diverged first. The noise of one
config's loss is stated, measured from seeds or from neighbouring grid differences (`noise`), never from
the scatter about a fit. Each scale's slice of each hyperparameter is fitted (`optimum`), giving its
optimum with a standard error. Then one test per hyperparameter (`shift_test`): does one value (after the
width rule, for lr) serve every scale, Holm-adjusted over hyperparameters, and does the loss care, i.e. does
the common value cost more than the threshold on some scale's own fitted curve (the margin)?
"Beyond" means by more than the regret's own error (one-sided 95%).
- *sensitive*: the optima differ significantly and the common value costs beyond the threshold somewhere;
- *insensitive*: the common value costs less than the threshold, beyond its error, at every scale (whether
  or not the optima differ, no scale loses what counts as mattering);
- *inconclusive*: the rest: the loss would care but the optima do not differ beyond the noise, or what the
  common value costs is within its error of the threshold.
Without a measured noise the threshold decides alone (sensitive when the loss cares), and the output says so.
The cause of a shift comes from pairs of scales that differ only in data or only in model size. The original
study's rule is reported beside it with why it differs when it does, and every hyperparameter that is not
sensitive gets a consensus constant.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm

from ..params.sections import AnalysisSettings
from ..results.documents import Provenance, SensitivityResult, stamped
from .constants import consensus, normalised_values, original_rule
from .hypotheses import judge_hypotheses
from .optimum import Landscape, Slice
from .shift_test import ShiftTest, best_rule, holm
from .table import blown_up_counts, fixed_hparams, mark_blown_up, sensitivity_rows, swept_hparams, validate_runs_table

SENSITIVE, INSENSITIVE, INCONCLUSIVE = "sensitive", "insensitive", "inconclusive"


def analyze_sensitivity(
    table: pd.DataFrame, settings: AnalysisSettings | None = None, *, provenance: Provenance | None = None
) -> SensitivityResult:
    """The sensitivity.json document for a run table (phase-1 rows when the table marks phases), carrying
    `provenance` (None: this call's, with no params hash)."""
    settings = settings or AnalysisSettings()
    table = mark_blown_up(validate_runs_table(table), settings.divergence_rise)
    table = sensitivity_rows(table)
    table = validate_runs_table(table, source="phase-1 rows of the runs table")  # still two scales, still swept
    land = Landscape.from_table(table, swept_hparams(table), settings)
    # A column that varies only between scales (e.g. an lr moved by a width rule but never swept) has no
    # slice anywhere: nothing can be said about it.
    hparams = [h for h in land.fits if len(land.fits[h]) >= 2]
    unjudged = [h for h in land.fits if len(land.fits[h]) < 2]
    thresholds = scale_thresholds(land.scales, settings)
    chosen = {h: best_rule(land, h, thresholds) for h in hparams}
    holm([test for test, _ in chosen.values()], settings.significance)
    z = pairwise_z(settings, len(hparams))

    fixed = fixed_hparams(table)
    verdicts, recommended = {}, {}
    for h in hparams:
        verdicts[h], constant = judge(land, *chosen[h], z)
        if verdicts[h]["verdict"] != SENSITIVE:
            recommended[h] = constant
    for h, value in fixed.items():
        recommended[h] = {"value": value, "rule": "none", "reference_width": None, "swept": False}

    content = {
        "hyperparameters": verdicts,
        "sensitive": [h for h in hparams if verdicts[h]["verdict"] == SENSITIVE],
        "inconclusive": [h for h in hparams if verdicts[h]["verdict"] == INCONCLUSIVE],
        "recommended": recommended,
        "fixed": fixed,
        "unjudged": unjudged,
        "threshold": {
            "kind": settings.threshold_kind, "value": settings.threshold, "per_scale": thresholds,
            "test": "Wald chi-square per hyperparameter, Holm over hyperparameters",
            "comparisons": sum(t.tested for t, _ in chosen.values()), "family_error": settings.significance,
            "z": z,
        },
        "noise": land.noise.as_dict(),
        "noise_source": land.noise.source,
        "blown_up": {"rise": settings.divergence_rise, "per_scale": blown_up_counts(table)},
        "batch_size_unit": table.attrs.get("batch_size_unit", "sequences"),
        "warnings": noise_warnings(land, settings),
        "scales": {
            scale: {
                "n_params": int(row["n_params"]), "tokens": int(row["tokens"]), "width": int(row["width"]),
                "best_loss": float(row["best_loss"]), "runs": int(row["runs"]), "blown_up": int(row["blown_up"]),
            }
            for scale, row in land.scales.iterrows()
        },
        "hypotheses": judge_hypotheses(land, verdicts, thresholds, lambda s: z * land.noise.difference_std(s)),
    }
    return stamped(SensitivityResult, content, provenance or Provenance.now())


def scale_thresholds(scales: pd.DataFrame, settings: AnalysisSettings) -> dict[str, float]:
    """Loss that counts as mattering at each scale: the settings' threshold (never raised to the noise: the
    noise enters the test instead)."""
    return {scale: float(configured_threshold(settings, best)) for scale, best in scales["best_loss"].items()}


def configured_threshold(settings: AnalysisSettings, best_loss: float) -> float:
    """The settings' threshold at a scale whose best loss is `best_loss`."""
    return settings.threshold * best_loss if settings.threshold_kind == "relative" else settings.threshold


def pairwise_z(settings: AnalysisSettings, hparams: int) -> float:
    """Two-sided z for one pair of scales at the family error spread over the hyperparameters (for the
    cause of a shift and the brief's hypotheses, which compare particular pairs)."""
    return float(norm.isf(settings.significance / (2 * max(hparams, 1))))


def noise_warnings(land: Landscape, settings: AnalysisSettings) -> list[str]:
    """A warning when no noise was measured (the threshold decides alone), and one when the noise of a
    difference exceeds the configured threshold (a finer grid will not make a hyperparameter look sensitive)."""
    noise = land.noise
    if not noise.measured:
        return ["noise: none measured (no seeds, no analysis.noise, fewer than 3 runs of 4 neighbouring grid "
                "values): the configured threshold decides every verdict alone; state it with --noise"]
    noisy = {scale: noise.difference_std(scale) / configured_threshold(settings, best)
             for scale, best in land.scales["best_loss"].items()
             if noise.difference_std(scale) > configured_threshold(settings, best)}
    if not noisy:
        return []
    return [f"noise ({noise.source}): one config's loss scatters by {noise.relative:.2%} of the loss; the "
            f"difference between two configs exceeds the configured threshold at {len(noisy)} of "
            f"{len(land.scales)} scales (up to {max(noisy.values()):.2g}x)"]


def judge(land: Landscape, test: ShiftTest, by_rule: dict[str, ShiftTest], z: float) -> tuple[dict, dict]:
    """The verdict for one hyperparameter, and its consensus constant (used when it is not sensitive)."""
    hparam = test.hparam
    gaps = {scale: loss_gaps(fit.slice, test.thresholds[scale]) for scale, fit in land.fits[hparam].items()}
    name = _verdict(test)
    regrets = transfer_regrets(land, test, z)
    shifts = bool(test.significant) if test.tested else test.loss_cares
    cause, pairs = shift_cause(regrets, name == SENSITIVE or (shifts and test.loss_cares))
    run_values = normalised_values(land, hparam, test.power, test.reference_width)
    constant = consensus(land, hparam, run_values, test.power, test.reference_width)
    worst = test.worst_scale
    verdict = {
        "verdict": name, "sensitive": name == SENSITIVE,
        "margin": test.margin, "required_margin": test.required_margin,
        "noise": land.noise.difference_std(worst), "noise_source": land.noise.source,
        # whether a grid step from the best costs more than the threshold somewhere (the loss cares about
        # this hyperparameter at all), and whether the common value does (the loss cares about its shift)
        "loss_sensitive": any(gap["loss_sensitive"] for gap in gaps.values()),
        "common_value_costs": test.loss_cares, "optimum_shifts": shifts, "shift_cause": cause,
        "p_value": test.p_value, "p_holm": test.p_adjusted, "width_rule": test.rule,
        "optimum": {scale: _optimum_row(land, hparam, scale) for scale in land.fits[hparam]},
        "test": test.as_dict(land),
        "evidence": {
            "thresholds": test.thresholds, "loss_gaps": gaps, "width_rule": test.rule,
            "worst_regret_by_rule": {r: t.regrets[t.worst_scale].value for r, t in by_rule.items()},
            "p_value_by_rule": {r: t.p_value for r, t in by_rule.items()},
            "regrets": regrets, "pairs": pairs, "consensus": constant,
            "at_edge": [s for s, f in land.fits[hparam].items() if f.optimum.at_edge],
            "extrapolated": [s for s, r in test.regrets.items() if r.extrapolated],
        },
    }
    rule_row = original_rule(land, hparam, test.thresholds, test.power, test.reference_width)
    verdict["original_rule"] = rule_row | {"why_differs": _why_rule_differs(verdict, rule_row)}
    verdict["reason"] = reason(hparam, verdict, test)
    return verdict, {k: constant[k] for k in ("value", "rule", "reference_width")} | {"swept": True, "verdict": name}


def _verdict(test: ShiftTest) -> str:
    if test.loss_indifferent:
        return INSENSITIVE
    # untested: no noise (the threshold decides alone) or a zero one (every shift is real)
    if test.loss_cares and (test.significant or not test.tested):
        return SENSITIVE
    return INCONCLUSIVE


def _why_rule_differs(verdict: dict[str, Any], rule: dict[str, Any]) -> str | None:
    """Why the original study's rule says otherwise, when it does (None when both agree)."""
    if verdict["verdict"] == SENSITIVE and rule["stable"]:
        return (f"{rule['value']:.4g} is within the threshold of the best run at every scale, but the fitted "
                f"curves put the optima apart (p {verdict['p_holm'] or 0:.2g}) and the common value costs "
                f"{verdict['margin']:.3g} more than the threshold at one scale")
    if verdict["verdict"] == INSENSITIVE and not rule["stable"]:
        return ("no single grid value is near-best at every scale, yet one value between the grid values costs "
                "less than the threshold on every scale's fitted curve")
    if verdict["verdict"] == INCONCLUSIVE:
        return "the optima do not differ beyond the noise although the loss would care: neither rule can tell"
    return None


def loss_gaps(slice_: Slice, threshold: float) -> dict[str, Any]:
    """What one grid step (each side) and the whole grid cost against the slice's best."""
    i, losses = slice_.best_index, slice_.losses
    steps = [losses[j] - losses[i] for j in (i - 1, i + 1) if 0 <= j < len(losses)]
    finite_steps = [g for g in steps if not math.isnan(g)]
    diverged_step = len(finite_steps) < len(steps)
    max_step = max(finite_steps, default=0.0)
    return {
        "step_gaps": steps, "max_step_gap": max_step, "diverged_step": diverged_step,
        "grid_gap": float(np.nanmax(losses) - losses[i]), "diverged_runs": int(np.isnan(losses).sum()),
        "threshold": threshold, "loss_sensitive": diverged_step or max_step > threshold,
    }


def transfer_regrets(land: Landscape, test: ShiftTest, z: float) -> list[dict[str, Any]]:
    """For every ordered pair of scales: what scale a's optimum costs at scale b (on b's fitted curve), and
    whether the two optima differ beyond the noise (|difference| / its standard error > z)."""
    rows = []
    for a, b in land.pairs(test.hparam):
        value = land.transferred(test.hparam, a, b, test.power)
        regret = land.regret_of(test.hparam, value, b)
        gap = abs(test.optima[a] - test.optima[b])
        stderr = math.hypot(test.stderr[a], test.stderr[b])
        apart = gap / stderr > z if test.tested and stderr > 0 else gap > 0
        exceeds = regret.diverges or regret.value > test.thresholds[b]
        rows.append({"from": a, "to": b, "kind": land.kind(a, b), "value": value, **regret.as_dict(),
                     "outside_grid": regret.extrapolated, "threshold": test.thresholds[b],
                     "exceeds": exceeds, "significant": exceeds and apart})
    return rows


def shift_cause(regrets: list[dict[str, Any]], shifts: bool) -> tuple[str, dict[str, Any]]:
    """"data", "model", "both" or "none" from pairs that differ in one thing only; "unknown" when the
    optimum shifts but the table has no pair of the kind that could tell."""
    pairs: dict[str, list[dict[str, Any]]] = {"data": [], "model": []}
    for kind in pairs:
        worst: dict[frozenset, dict[str, Any]] = {}
        for r in (r for r in regrets if r["kind"] == kind):
            key = frozenset((r["from"], r["to"]))
            if key not in worst or r["regret"] > worst[key]["regret"]:
                worst[key] = r
        pairs[kind] = [{"scales": sorted(key), "regret": r["regret"], "exceeds": r["exceeds"],
                        "significant": r["significant"]} for key, r in worst.items()]
    moves = {kind: any(p["significant"] for p in rows) if rows else None for kind, rows in pairs.items()}
    if not shifts:
        cause = "none"
    elif moves["data"] and moves["model"]:
        cause = "both"
    elif moves["data"] or moves["model"]:
        cause = "data" if moves["data"] else "model"
    else:
        # Neither change alone moves it: only their combination does, or the table cannot tell.
        cause = "unknown" if None in moves.values() else "both"
    return cause, pairs


def reason(hparam: str, verdict: dict[str, Any], test: ShiftTest) -> str:
    """One readable sentence with the numbers behind the decision."""
    worst = test.worst_scale
    regret = test.regrets[worst]
    after = f" after the {test.rule.replace('_', ' ')} rule" if test.rule != "none" else ""
    common = f"{verdict['test']['common_value']:.4g}{after}"
    flags = (" (extrapolated beyond its runs)" if regret.extrapolated else "") + (
        " (past a diverged run)" if regret.diverges else "")
    cost = (f"one value for every scale ({common}) costs up to {regret.value:.3g} +- {regret.stderr:.2g} at "
            f"{worst}{flags}, threshold {test.thresholds[worst]:.3g}: margin {test.margin:.3g}")
    if test.tested:
        trend = f", or a trend in scale on {test.trend['dof']}" if test.trend else ""
        judged = (f"the optima differ with p {test.p_value:.2g} (Holm {test.p_adjusted:.2g}; Wald chi-square on "
                  f"{test.dof} dof{trend}) against the {verdict['noise_source']} noise of a difference "
                  f"{verdict['noise']:.3g}")
    else:
        judged = "; ".join(test.notes)
    causes = {"both": "data and model", "unknown": "scale (the table cannot tell data from model)"}
    text = {
        SENSITIVE: f"sensitive, the optimum moves with {causes.get(verdict['shift_cause'], verdict['shift_cause'])}",
        INCONCLUSIVE: ("inconclusive, the loss would care but the optima do not differ beyond the noise"
                       if test.loss_cares else
                       "inconclusive, what one value costs is within its error of the threshold"),
        INSENSITIVE: "not sensitive, one value serves every scale",
    }[verdict["verdict"]]
    edge = verdict["evidence"]["at_edge"]
    edge_part = f"; the optimum lies at the grid edge at {', '.join(edge)} (widen the grid)" if edge else ""
    return f"{hparam}: {text}: {cost}; {judged}{edge_part}."


def _optimum_row(land: Landscape, hparam: str, scale: str) -> dict[str, Any]:
    row = land.fits[hparam][scale].optimum.as_dict()
    if hparam == "lr":
        width = land.width(scale)
        row["lr_x_width"] = row["refined"] * width
        row["lr_x_sqrt_width"] = row["refined"] * math.sqrt(width)
    return row
