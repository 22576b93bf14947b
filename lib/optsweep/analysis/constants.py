"""What a hyperparameter that is not sensitive is set to (one constant for every scale, moved by the width
rule for lr), and the original study's rule beside the verdict: stable when one value is near-best at every
scale."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..params.settings import round_sig
from .optimum import WIDTH_RULES, Landscape


def normalised_values(land: Landscape, hparam: str, power: float, reference_width: int | None) -> list[float]:
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
