"""Which hyperparameters are sensitive to scale (the brief's two standards), and what causes a shift.

For each swept hyperparameter, at each scale:
- *loss sensitivity*: what one grid step away from the optimum costs, against a threshold (relative 0.25%
  of the scale's best loss by default, raised to the measured seed noise when there is one);
- *optimum shift*: the regret of carrying one scale's optimum to another scale, read off the other scale's
  slice (lr carried under each width rule, the best rule kept);
- *cause*: the same regrets on pairs of scales that differ only in data or only in model size.
Sensitive = loss-sensitive and the optimum shifts. The original study's rule (one value near-best at every
scale = stable) is reported beside it, and every insensitive hyperparameter gets a consensus constant.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from ..config import AnalysisSettings, round_sig
from .hypotheses import judge_hypotheses
from .optimum import WIDTH_RULES, Landscape, Slice
from .table import fixed_hparams, seed_noise, sensitivity_rows, swept_hparams, validate_runs_table


def analyze_sensitivity(table: pd.DataFrame, settings: AnalysisSettings | None = None) -> dict[str, Any]:
    """The sensitivity.json dict for a run table (phase-1 rows when the table marks phases)."""
    settings = settings or AnalysisSettings()
    table = sensitivity_rows(validate_runs_table(table))
    table = validate_runs_table(table, source="phase-1 rows of the runs table")  # still two scales, still swept
    land = Landscape.from_table(table, swept_hparams(table))
    # A column that varies only between scales (e.g. an lr moved by a width rule but never swept) has no
    # slice anywhere: nothing can be said about it.
    hparams = [h for h in land.slices if land.slices[h]]
    unjudged = [h for h in land.slices if not land.slices[h]]
    noise = seed_noise(table)
    thresholds = scale_thresholds(land.scales, settings, noise)

    fixed = fixed_hparams(table)
    verdicts, recommended = {}, {}
    for h in hparams:
        verdicts[h], constant = judge(land, h, thresholds)
        if not verdicts[h]["sensitive"]:
            recommended[h] = constant
    for h, value in fixed.items():
        recommended[h] = {"value": value, "rule": "none", "reference_width": None, "swept": False}

    return {
        "hyperparameters": verdicts,
        "sensitive": [h for h in hparams if verdicts[h]["sensitive"]],
        "recommended": recommended,
        "fixed": fixed,
        "unjudged": unjudged,
        "threshold": {
            "kind": settings.threshold_kind,
            "value": settings.threshold,
            "use_seed_noise": settings.use_seed_noise,
            "noise_used": _noise_used(noise, settings),
            "per_scale": thresholds,
        },
        "noise": noise,
        "scales": {
            scale: {
                "n_params": int(row["n_params"]), "tokens": int(row["tokens"]), "width": int(row["width"]),
                "best_loss": float(row["best_loss"]), "runs": int(row["runs"]),
            }
            for scale, row in land.scales.iterrows()
        },
        "hypotheses": judge_hypotheses(land, verdicts, thresholds),
    }


def scale_thresholds(scales: pd.DataFrame, settings: AnalysisSettings, noise: dict | None) -> dict[str, float]:
    """Loss that counts as mattering at each scale: the settings' threshold, raised to the measured seed
    noise (the paired noise when configs share seeds, as our sweeps' do) when there is one."""
    measured = _noise_used(noise, settings) or 0.0
    thresholds = {}
    for scale, best_loss in scales["best_loss"].items():
        value = settings.threshold * best_loss if settings.threshold_kind == "relative" else settings.threshold
        thresholds[scale] = float(max(value, measured))
    return thresholds


def _noise_used(noise: dict | None, settings: AnalysisSettings) -> float | None:
    return (noise["paired_std"] or noise["std"]) if noise and settings.use_seed_noise else None


def judge(land: Landscape, hparam: str, thresholds: dict[str, float]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The verdict for one hyperparameter, and its consensus constant (used when it is not sensitive)."""
    slices = land.slices[hparam]
    gaps = {scale: loss_gaps(s, thresholds[scale]) for scale, s in slices.items()}
    loss_sensitive = any(g["loss_sensitive"] for g in gaps.values())

    widths = land.scales.loc[list(slices), "width"]
    rules = WIDTH_RULES if hparam == "lr" and widths.nunique() > 1 else {"none": 0.0}
    by_rule = {rule: transfer_regrets(land, hparam, power, thresholds) for rule, power in rules.items()}
    rule = min(by_rule, key=lambda r: _worst(by_rule[r])["excess"])
    regrets, power = by_rule[rule], rules[rule]
    optimum_shifts = any(r["exceeds"] for r in regrets)
    cause, pairs = shift_cause(regrets, optimum_shifts)
    reference_width = int(widths.min()) if rule != "none" else None

    run_values = _normalised_values(land, hparam, power, reference_width)
    constant = consensus(land, hparam, run_values, power, reference_width)
    verdict = {
        "sensitive": loss_sensitive and optimum_shifts,
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
        "original_rule": original_rule(land, hparam, thresholds, power, reference_width),
    }
    verdict["reason"] = reason(hparam, verdict, gaps, regrets, rule, verdict["evidence"]["at_edge"])
    return verdict, {k: constant[k] for k in ("value", "rule", "reference_width")} | {"swept": True}


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
    if verdict["sensitive"]:
        causes = {"both": "data and model", "unknown": "scale (the table cannot tell data from model)"}
        verdict_part = f"sensitive, the optimum moves with {causes.get(verdict['shift_cause'], verdict['shift_cause'])}"
    elif not verdict["loss_sensitive"]:
        verdict_part = "not sensitive, the loss barely cares"
    else:
        verdict_part = "not sensitive, one value serves every scale"
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

