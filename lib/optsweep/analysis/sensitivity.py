"""Which hyperparameters are sensitive to scale (the brief's two standards), and what causes a shift.

Runs that blew up (a finite loss far above their scale's best) are marked diverged first. Then, for each
swept hyperparameter, at each scale:
- *loss sensitivity*: what one grid step away from the optimum costs, against a threshold (relative 0.25%
  of the scale's best loss by default, floored at the measured noise of a difference between two configs);
- *optimum shift*: the regret of carrying one scale's optimum to another scale, read off the other scale's
  slice (lr carried under each width rule, the best rule kept); its *margin* is the worst regret minus
  the threshold;
- *cause*: the same regrets on pairs of scales that differ only in data or only in model size.
One verdict per hyperparameter: *sensitive* when the loss cares and the margin is significant against the
measured noise (over z standard errors of a difference, z Bonferroni-corrected over every comparison made:
hyperparameters x scale pairs, so the largest of many noisy differences does not pass for a shift);
*insensitive* when the margin is not positive; *inconclusive* in between (the margin is within the noise).
The original study's rule (one value near-best at every scale = stable) is reported beside it with why it
differs when it does, and every hyperparameter that is not sensitive gets a consensus constant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm

from ..config import AnalysisSettings, round_sig
from .hypotheses import judge_hypotheses
from .noise import Noise
from .optimum import WIDTH_RULES, Landscape, Slice
from .table import (
    blown_up_counts,
    fixed_hparams,
    mark_blown_up,
    sensitivity_rows,
    swept_hparams,
    validate_runs_table,
)

SENSITIVE, INSENSITIVE, INCONCLUSIVE = "sensitive", "insensitive", "inconclusive"


@dataclass(frozen=True)
class Significance:
    """What a margin must beat at each scale: z x the noise of a difference between two configs there."""

    z: float
    comparisons: int
    family_error: float
    difference_std: dict[str, float]

    def required(self, scale: str) -> float:
        return self.z * self.difference_std[scale]


def analyze_sensitivity(table: pd.DataFrame, settings: AnalysisSettings | None = None) -> dict[str, Any]:
    """The sensitivity.json dict for a run table (phase-1 rows when the table marks phases)."""
    settings = settings or AnalysisSettings()
    table = mark_blown_up(validate_runs_table(table), settings.divergence_rise)
    table = sensitivity_rows(table)
    table = validate_runs_table(table, source="phase-1 rows of the runs table")  # still two scales, still swept
    land = Landscape.from_table(table, swept_hparams(table))
    # A column that varies only between scales (e.g. an lr moved by a width rule but never swept) has no
    # slice anywhere: nothing can be said about it.
    hparams = [h for h in land.slices if land.slices[h]]
    unjudged = [h for h in land.slices if not land.slices[h]]
    thresholds = scale_thresholds(land.scales, settings, land.noise)
    significance = judged_against(land, hparams, settings)

    fixed = fixed_hparams(table)
    verdicts, recommended = {}, {}
    for h in hparams:
        verdicts[h], constant = judge(land, h, thresholds, significance)
        if verdicts[h]["verdict"] != SENSITIVE:
            recommended[h] = constant
    for h, value in fixed.items():
        recommended[h] = {"value": value, "rule": "none", "reference_width": None, "swept": False}

    return {
        "hyperparameters": verdicts,
        "sensitive": [h for h in hparams if verdicts[h]["verdict"] == SENSITIVE],
        "inconclusive": [h for h in hparams if verdicts[h]["verdict"] == INCONCLUSIVE],
        "recommended": recommended,
        "fixed": fixed,
        "unjudged": unjudged,
        "threshold": {
            "kind": settings.threshold_kind,
            "value": settings.threshold,
            "use_seed_noise": settings.use_seed_noise,
            "per_scale": thresholds,
            "z": significance.z,
            "comparisons": significance.comparisons,
            "family_error": significance.family_error,
        },
        "noise": land.noise.as_dict(),
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
        "hypotheses": judge_hypotheses(land, verdicts, thresholds, significance.required),
    }


def scale_thresholds(scales: pd.DataFrame, settings: AnalysisSettings, noise: Noise) -> dict[str, float]:
    """Loss that counts as mattering at each scale: the settings' threshold, floored at the measured noise of
    a difference between two configs there (unless `use_seed_noise` is off)."""
    thresholds = {}
    for scale, best_loss in scales["best_loss"].items():
        floor = noise.difference_std(scale) if settings.use_seed_noise else 0.0
        thresholds[scale] = float(max(configured_threshold(settings, best_loss), floor))
    return thresholds


def configured_threshold(settings: AnalysisSettings, best_loss: float) -> float:
    """The settings' threshold at a scale whose best loss is `best_loss` (before the noise floor)."""
    return settings.threshold * best_loss if settings.threshold_kind == "relative" else settings.threshold


def judged_against(land: Landscape, hparams: list[str], settings: AnalysisSettings) -> Significance:
    """One-sided z for a family-wise error of `settings.significance` over every shift comparison made."""
    comparisons = max(1, sum(len(land.pairs(h)) for h in hparams))
    z = float(norm.isf(settings.significance / comparisons))
    noise = {scale: land.noise.difference_std(scale) for scale in land.scales.index}
    return Significance(z, comparisons, settings.significance, noise)


def noise_warnings(land: Landscape, settings: AnalysisSettings) -> list[str]:
    """A warning when the measured noise is above the configured threshold (the verdicts are then judged
    against the noise, and a finer grid will not make a hyperparameter look sensitive)."""
    noisy = {}
    for scale, best_loss in land.scales["best_loss"].items():
        configured = configured_threshold(settings, best_loss)
        if land.noise.difference_std(scale) > configured:
            noisy[scale] = (land.noise.difference_std(scale), configured)
    if not noisy:
        return []
    scale, (measured, configured) = max(noisy.items(), key=lambda item: item[1][0] / item[1][1])
    return [
        f"noise: the loss of one config scatters by {land.noise.relative:.2%} of the loss "
        f"({', '.join(land.noise.sources)}); the difference between two configs ({measured:.3g} at "
        f"{scale}) exceeds the configured threshold ({configured:.3g}) at {len(noisy)} of {len(land.scales)} "
        f"scales: thresholds were raised to it"
        + ("" if settings.use_seed_noise else " (not applied: use_seed_noise is off)")
    ]


def judge(
    land: Landscape, hparam: str, thresholds: dict[str, float], significance: Significance
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The verdict for one hyperparameter, and its consensus constant (used when it is not sensitive)."""
    slices = land.slices[hparam]
    gaps = {scale: loss_gaps(s, thresholds[scale]) for scale, s in slices.items()}
    loss_sensitive = any(g["loss_sensitive"] for g in gaps.values())

    widths = land.scales.loc[list(slices), "width"]
    rules = WIDTH_RULES if hparam == "lr" and widths.nunique() > 1 else {"none": 0.0}
    by_rule = {rule: transfer_regrets(land, hparam, power, thresholds) for rule, power in rules.items()}
    rule = min(by_rule, key=lambda r: _worst(by_rule[r])["excess"])
    regrets, power = by_rule[rule], rules[rule]
    worst = _worst(regrets)
    margin = worst["excess"] if regrets else None
    required = significance.required(worst["to"]) if regrets else None
    for r in regrets:
        r["significant"] = r["regret"] - r["threshold"] > significance.required(r["to"])
    verdict_name = _verdict(loss_sensitive, margin, required)
    optimum_shifts = any(r["significant"] for r in regrets)
    cause, pairs = shift_cause(regrets, optimum_shifts)
    reference_width = int(widths.min()) if rule != "none" else None

    run_values = _normalised_values(land, hparam, power, reference_width)
    constant = consensus(land, hparam, run_values, power, reference_width)
    verdict = {
        "verdict": verdict_name,
        "sensitive": verdict_name == SENSITIVE,
        "margin": margin,
        "noise": significance.difference_std[worst["to"]] if regrets else None,
        "required_margin": required,
        "loss_sensitive": loss_sensitive,
        "optimum_shifts": optimum_shifts,
        "shift_cause": cause,
        "optimum": {scale: _optimum_row(land, hparam, scale) for scale in slices},
        "evidence": {
            "thresholds": {scale: thresholds[scale] for scale in slices},
            "loss_gaps": gaps,
            "width_rule": rule,
            "worst_regret_by_rule": {r: _worst(rows)["regret"] for r, rows in by_rule.items()},
            "regrets": regrets,
            "pairs": pairs,
            "consensus": constant,
            "at_edge": [scale for scale, optimum in land.optima[hparam].items() if optimum.at_edge],
        },
    }
    rule_row = original_rule(land, hparam, thresholds, power, reference_width)
    verdict["original_rule"] = rule_row | {"why_differs": _why_rule_differs(verdict, rule_row)}
    verdict["reason"] = reason(hparam, verdict, gaps, regrets, rule, verdict["evidence"]["at_edge"])
    return verdict, {k: constant[k] for k in ("value", "rule", "reference_width")} | {
        "swept": True, "verdict": verdict_name
    }


def _verdict(loss_sensitive: bool, margin: float | None, required: float | None) -> str:
    if margin is None:
        return INCONCLUSIVE  # swept at one scale only: no shift can be measured
    if margin <= 0 or not loss_sensitive:
        return INSENSITIVE
    return SENSITIVE if margin > required else INCONCLUSIVE


def _why_rule_differs(verdict: dict[str, Any], rule: dict[str, Any]) -> str | None:
    """Why the original study's rule says otherwise, when it does (None when both agree)."""
    if verdict["verdict"] == SENSITIVE and rule["stable"]:
        return (f"{rule['value']:.4g} is within the threshold of the best run at every scale, but carrying one "
                f"scale's optimum to another costs {verdict['margin']:.3g} more than the threshold there")
    if verdict["verdict"] == INSENSITIVE and not rule["stable"]:
        return ("no single grid value is near-best at every scale, yet each scale's optimum costs less than the "
                "threshold at the others (the optima lie between grid values)")
    if verdict["verdict"] == INCONCLUSIVE:
        return "the margin is within the noise: neither rule can be trusted to tell"
    return None


def loss_gaps(slice_: Slice, threshold: float) -> dict[str, Any]:
    """What one grid step (each side) and the whole grid cost against the slice's best."""
    i, losses = slice_.best_index, slice_.losses
    steps = [losses[j] - losses[i] for j in (i - 1, i + 1) if 0 <= j < len(losses)]
    finite_steps = [g for g in steps if not math.isnan(g)]
    diverged_step = len(finite_steps) < len(steps)
    max_step = max(finite_steps, default=0.0)
    return {
        "step_gaps": steps,
        "max_step_gap": max_step,
        "diverged_step": diverged_step,
        "grid_gap": float(np.nanmax(losses) - losses[i]),
        "diverged_runs": int(np.isnan(losses).sum()),
        "threshold": threshold,
        "loss_sensitive": diverged_step or max_step > threshold,
    }


def transfer_regrets(
    land: Landscape, hparam: str, power: float, thresholds: dict[str, float]
) -> list[dict[str, Any]]:
    """For every ordered pair of scales: what scale a's optimum costs at scale b."""
    rows = []
    for a, b in land.pairs(hparam):
        value = land.transferred(hparam, a, b, power)
        regret, outside = land.regret(hparam, value, b)
        rows.append(
            {
                "from": a, "to": b, "kind": land.kind(a, b), "value": value, "regret": regret,
                "outside_grid": outside, "threshold": thresholds[b], "exceeds": regret > thresholds[b],
            }
        )
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
        pairs[kind] = [
            {"scales": sorted(key), "regret": r["regret"], "exceeds": r["exceeds"]} for key, r in worst.items()
        ]
    moves = {kind: any(p["exceeds"] for p in rows) if rows else None for kind, rows in pairs.items()}
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


def _normalised_values(land: Landscape, hparam: str, power: float, reference_width: int | None) -> list[float]:
    """Every value of `hparam` run at any scale, expressed at the reference width (lr under a width rule)."""
    values = set()
    for scale, s in land.slices[hparam].items():
        values |= {round_sig(land.to_reference(v, scale, power, reference_width)) for v in s.values}
    return sorted(values)


def consensus(
    land: Landscape, hparam: str, candidates: list[float], power: float, reference_width: int | None
) -> dict[str, Any]:
    """The candidate value with the smallest worst regret over scales (inside every grid first, then by
    mean regret): one constant for all scales."""
    scored = []
    for value in sorted(candidates):
        regrets, outside = [], 0
        for scale in land.slices[hparam]:
            regret, out = land.regret(hparam, land.from_reference(value, scale, power, reference_width), scale)
            regrets.append(regret)
            outside += out
        scored.append(((outside, max(regrets), float(np.mean(regrets))), value))
    (outside, worst, mean), value = min(scored)
    rule = next(r for r, p in WIDTH_RULES.items() if p == power)
    return {
        "value": value, "rule": rule, "reference_width": reference_width,
        "worst_regret": worst, "mean_regret": mean, "scales_outside_grid": outside,
    }


def original_rule(
    land: Landscape, hparam: str, thresholds: dict[str, float], power: float, reference_width: int | None
) -> dict[str, Any]:
    """The original study's rule: stable when one value is near-best at every scale. Near-best = within the
    scale's threshold of its best run (over all runs of the scale); lr compared after the width rule."""
    common: set[float] | None = None
    for scale in land.slices[hparam]:
        runs = land.configs[land.configs["scale"] == scale]
        near = runs[runs["loss"] <= runs["loss"].min() + thresholds[scale]]
        values = {round_sig(land.to_reference(v, scale, power, reference_width)) for v in near[hparam]}
        common = values if common is None else common & values
    common = common or set()
    value = consensus(land, hparam, sorted(common), power, reference_width)["value"] if common else None
    window = "per-scale threshold"
    return {"stable": bool(common), "value": value, "common_values": sorted(common), "window": window}


def reason(
    hparam: str, verdict: dict[str, Any], gaps: dict[str, dict], regrets: list[dict], rule: str, at_edge: list[str]
) -> str:
    """One readable sentence with the numbers behind the decision."""
    def badness(scale: str) -> tuple[bool, float]:
        return gaps[scale]["diverged_step"], gaps[scale]["max_step_gap"] - gaps[scale]["threshold"]

    worst_gap_scale = max(gaps, key=badness)
    g = gaps[worst_gap_scale]
    if g["diverged_step"]:
        loss_part = f"one grid step from the optimum diverges at {worst_gap_scale}"
    else:
        loss_part = (
            f"one grid step from the optimum costs up to {g['max_step_gap']:.3g} at {worst_gap_scale} "
            f"(threshold {g['threshold']:.3g})"
        )
    if not regrets:
        shift_part = "it was swept at fewer than two scales, so no shift can be measured"
    else:
        w = _worst(regrets)
        after = f" after the {rule.replace('_', ' ')} rule" if rule != "none" else ""
        shift_part = (
            f"carrying one scale's optimum to another costs at most {w['regret']:.3g}{after} "
            f"({w['from']} -> {w['to']}, threshold {w['threshold']:.3g})"
        )
    if verdict["verdict"] == SENSITIVE:
        causes = {"both": "data and model", "unknown": "scale (the table cannot tell data from model)"}
        verdict_part = f"sensitive, the optimum moves with {causes.get(verdict['shift_cause'], verdict['shift_cause'])}"
    elif verdict["verdict"] == INCONCLUSIVE:
        verdict_part = "inconclusive, the margin is within the noise"
    elif not verdict["loss_sensitive"]:
        verdict_part = "not sensitive, the loss barely cares"
    else:
        verdict_part = "not sensitive, one value serves every scale"
    if verdict["margin"] is not None:
        shift_part += (f"; margin {verdict['margin']:.3g} against {verdict['required_margin']:.3g} "
                       f"(z x noise {verdict['noise']:.3g})")
    edge_part = f"; the optimum lies at the grid edge at {', '.join(at_edge)} (widen the grid)" if at_edge else ""
    return f"{hparam}: {verdict_part}: {loss_part}; {shift_part}{edge_part}."


def _optimum_row(land: Landscape, hparam: str, scale: str) -> dict[str, Any]:
    row = land.optima[hparam][scale].as_dict()
    if hparam == "lr":
        width = land.scales.loc[scale, "width"]
        row["lr_x_width"] = row["refined"] * width
        row["lr_x_sqrt_width"] = row["refined"] * math.sqrt(width)
    return row


def _worst(regrets: list[dict[str, Any]]) -> dict[str, Any]:
    """The pair whose regret exceeds its threshold the most (with that excess)."""
    worst = max(regrets, key=lambda r: r["regret"] - r["threshold"], default=None)
    if worst is None:
        return {"regret": 0.0, "excess": -math.inf}
    return worst | {"excess": worst["regret"] - worst["threshold"]}

