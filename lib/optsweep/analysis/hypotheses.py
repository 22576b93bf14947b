"""The brief's conjectures, each answered supported / contradicted / inconclusive with the numbers behind it.

All verdicts use the same currency as the sensitivity decision: regret (the loss a rule or a value costs at
a scale, read off that scale's slice) against the scale's threshold, and a hypothesis is contradicted only
by a regret above the threshold by more than the margin the sensitivity verdicts need (`required`). A
hypothesis whose two alternatives fit equally well is inconclusive, and each answer names the sensitivity
verdict of its hyperparameter, with why they differ when they do.
"""

from __future__ import annotations

from typing import Any, Callable

from .optimum import WIDTH_RULES, Landscape

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"


Required = Callable[[str], float]  # scale -> the margin over the threshold that counts as significant there


def judge_hypotheses(
    land: Landscape, verdicts: dict[str, dict[str, Any]], thresholds: dict[str, float], required: Required
) -> list[dict[str, Any]]:
    answers = [
        ("lr", lr_inverse_width(land, verdicts, thresholds, required)),
        ("weight_decay", value_everywhere(land, verdicts, "weight_decay", 0.1, thresholds, required)),
        ("clip", value_everywhere(land, verdicts, "clip", 1.0, thresholds, required)),
        ("eps", eps_insensitive(verdicts)),
        ("beta1", higher_beta_for_longer_training(land, verdicts, "beta1", thresholds, required)),
        ("beta2", higher_beta_for_longer_training(land, verdicts, "beta2", thresholds, required)),
        ("warmup", warmup_constant(land, thresholds, required)),
    ]
    for hparam, answer in answers:
        answer["sensitivity_verdict"] = verdicts[hparam]["verdict"] if hparam in verdicts else None
    return [answer for _, answer in answers]


def _answer(hypothesis: str, verdict: str, why: str, **evidence: Any) -> dict[str, Any]:
    return {"hypothesis": hypothesis, "verdict": verdict, "evidence": {"why": why, **evidence}}


def _swept(land: Landscape, hparam: str) -> bool:
    return bool(land.slices.get(hparam))


def lr_inverse_width(
    land: Landscape, verdicts: dict, thresholds: dict[str, float], required: Required
) -> dict[str, Any]:
    """lr x width constant: carry each scale's optimal lr to scales of another width under that rule.
    Pairs that differ only in model size are used when there are any, so data effects do not interfere."""
    text = "the learning rate scales inversely with width (lr x width constant)"
    if not _swept(land, "lr"):
        return _answer(text, INCONCLUSIVE, "lr was not swept")
    pairs = [(a, b) for a, b in land.pairs("lr") if land.scales.loc[a, "width"] != land.scales.loc[b, "width"]]
    model_pairs = [(a, b) for a, b in pairs if land.kind(a, b) == "model"]
    # A censored optimum (at the grid edge) carried elsewhere is no point to judge a rule by, and a value
    # carried beyond a scale's runs where no curve was fitted has no known cost there: only pairs whose cost
    # is known under every rule compare the rules.
    used = [(a, b) for a, b in (model_pairs or pairs)
            if all(_carried_cost_known(land, "lr", a, b, power) for power in WIDTH_RULES.values())]
    widths = {s: float(land.scales.loc[s, "width"]) for s in land.slices["lr"]}
    optimum = {s: land.optima["lr"][s].refined for s in land.slices["lr"]}
    evidence: dict[str, Any] = {
        "lr_x_width": {s: optimum[s] * widths[s] for s in optimum},
        "lr_x_sqrt_width": {s: optimum[s] * widths[s] ** 0.5 for s in optimum},
        "pairs": "model-only" if model_pairs else "all pairs of different width",
    }
    if not pairs:
        return _answer(text, INCONCLUSIVE, "every scale has the same width", **evidence)
    if not used:
        why = "the optimal lr lies at the grid edge, or a rule carries it beyond the runs, at every pair compared"
        return _answer(text, INCONCLUSIVE, why, **evidence)
    worst, significant = {}, {}
    for rule, power in WIDTH_RULES.items():
        excess = [
            (land.regret("lr", land.transferred("lr", a, b, power), b)[0] - thresholds[b], required(b)) for a, b in used
        ]
        worst[rule] = max(e for e, _ in excess)
        significant[rule] = any(e > r for e, r in excess)
    evidence["worst_regret_minus_threshold"] = worst
    evidence["best_rule"] = min(worst, key=worst.get)
    if not verdicts["lr"]["loss_sensitive"]:
        why = "the loss barely depends on lr, so no width rule can be told apart"
        return _answer(text, INCONCLUSIVE, why, **evidence)
    if worst["inverse_width"] <= 0:
        rivals = [r for r in WIDTH_RULES if r != "inverse_width" and worst[r] <= 0]
        if rivals:
            why = (f"lr x width costs less than the threshold, but so does the {rivals[0].replace('_', ' ')} rule: "
                   "these scales cannot tell them apart")
            return _answer(text, INCONCLUSIVE, why, **evidence)
        why = "lr x width carried across widths costs less than the threshold, and the other rules do not"
        return _answer(text, SUPPORTED, why, **evidence)
    if not significant["inverse_width"]:
        why = f"lr x width costs {worst['inverse_width']:.3g} above the threshold, within the noise"
        return _answer(text, INCONCLUSIVE, why, **evidence)
    return _answer(
        text, CONTRADICTED,
        f"lr x width carried across widths costs {worst['inverse_width']:.3g} above the threshold; "
        f"best rule: {evidence['best_rule']}", **evidence,
    )


def _carried_cost_known(land: Landscape, hparam: str, a: str, b: str, power: float = 0.0) -> bool:
    """Whether scale a's optimum is a point estimate and its cost at b, carried under the rule, is known."""
    if land.optima[hparam][a].at_edge:
        return False
    regret = land.regret_of(hparam, land.transferred(hparam, a, b, power), b)
    return not (regret.extrapolated and land.optima[hparam][b].estimate == "measured")


def value_everywhere(
    land: Landscape, verdicts: dict, hparam: str, value: float, thresholds: dict[str, float], required: Required
) -> dict[str, Any]:
    """A fixed value is optimal everywhere when it costs less than the threshold at every scale (contradicted
    when it costs significantly more somewhere)."""
    text = f"{hparam} = {value:g} is optimal at every scale"
    if not _swept(land, hparam):
        return _answer(text, INCONCLUSIVE, f"{hparam} was not swept")
    regret, outside = {}, []
    for scale in land.slices[hparam]:
        regret[scale], out = land.regret(hparam, value, scale)
        if out:
            outside.append(scale)
    evidence = {
        "regret": regret,
        "thresholds": {s: thresholds[s] for s in regret},
        "optimum": {s: land.optima[hparam][s].refined for s in regret},
        "outside_grid": outside,
    }
    inside = [s for s in regret if s not in outside]
    costly = [s for s in inside if regret[s] - thresholds[s] > required(s)]
    if costly:
        return _answer(text, CONTRADICTED, f"{value:g} costs {regret[costly[0]]:.3g} at {costly[0]}", **evidence)
    if outside:
        why = f"{value:g} lies outside the grid at {', '.join(outside)}"
        return _answer(text, INCONCLUSIVE, why, **evidence)
    above = [s for s in inside if regret[s] > thresholds[s]]
    if above:
        why = f"{value:g} costs {regret[above[0]]:.3g} at {above[0]}, above the threshold but within the noise"
        return _answer(text, INCONCLUSIVE, why, **evidence)
    why = f"{value:g} costs less than the threshold at every scale"
    if verdicts.get(hparam, {}).get("verdict") == "sensitive":
        why += (f" (yet {hparam} is sensitive: each scale's own optimum costs more than the threshold at another "
                "scale, while this value sits between them)")
    return _answer(text, SUPPORTED, why, **evidence)


def eps_insensitive(verdicts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    text = "epsilon is insensitive to scale"
    if "eps" not in verdicts:
        return _answer(text, INCONCLUSIVE, "eps was not swept")
    v = verdicts["eps"]
    evidence = {"sensitivity": v["verdict"], **{k: v[k] for k in ("margin", "required_margin", "reason")}}
    if v["verdict"] == "sensitive":
        return _answer(text, CONTRADICTED, "the loss cares about eps and its optimum shifts", **evidence)
    if v["verdict"] == "inconclusive":
        return _answer(text, INCONCLUSIVE, "eps's margin is within the noise", **evidence)
    return _answer(text, SUPPORTED, "eps is not sensitive to scale", **evidence)


def _data_pairs(land: Landscape, hparam: str) -> list[tuple[str, str]]:
    """(shorter, longer) pairs of scales with the same model and different training duration."""
    duration = land.scales["duration"]
    return [(a, b) for a, b in land.pairs(hparam) if land.kind(a, b) == "data" and duration[b] > duration[a]]


def higher_beta_for_longer_training(
    land: Landscape, verdicts: dict, hparam: str, thresholds: dict[str, float], required: Required
) -> dict[str, Any]:
    """Along pairs that differ only in training duration: does the longer run's optimum rise, by enough
    that the shorter run's optimum costs more than the threshold there?"""
    text = f"a higher {hparam} is better for longer training"
    if not _swept(land, hparam):
        return _answer(text, INCONCLUSIVE, f"{hparam} was not swept")
    pairs = _data_pairs(land, hparam)
    if not pairs:
        return _answer(text, INCONCLUSIVE, "no two scales differ only in training duration")
    rows = []
    for short, long in pairs:
        regret, _ = land.regret(hparam, land.transferred(hparam, short, long), long)
        rows.append(
            {
                "shorter": short, "longer": long,
                "optimum_shorter": land.optima[hparam][short].refined,
                "optimum_longer": land.optima[hparam][long].refined,
                "regret_of_shorter_optimum": regret, "threshold": thresholds[long], "required": required(long),
            }
        )
    moved = [r for r in rows if r["regret_of_shorter_optimum"] - r["threshold"] > r["required"]]
    up = [r for r in moved if r["optimum_longer"] > r["optimum_shorter"]]
    down = [r for r in moved if r["optimum_longer"] < r["optimum_shorter"]]
    cares = any(verdicts[hparam]["evidence"]["loss_gaps"][r["longer"]]["loss_sensitive"] for r in rows)
    if up and not down:
        why = "the longer run's optimum is higher, and the shorter run's costs above the threshold there"
        return _answer(text, SUPPORTED, why, pairs=rows)
    if down and not up:
        why = "the longer run's optimum is lower, by more than the threshold"
        return _answer(text, CONTRADICTED, why, pairs=rows)
    unmoved = all(r["regret_of_shorter_optimum"] <= r["threshold"] for r in rows)
    if unmoved and cares:
        why = "the optimum does not move with duration although the loss cares"
        return _answer(text, CONTRADICTED, why, pairs=rows)
    if up:
        why = "mixed directions across pairs"
    elif not unmoved:
        why = "the optimum moves by a margin within the noise"
    else:
        why = "the loss barely depends on it at the longer scales"
    return _answer(text, INCONCLUSIVE, why, pairs=rows)


def warmup_constant(land: Landscape, thresholds: dict[str, float], required: Required) -> dict[str, Any]:
    """Constant warmup steps vs warmup proportional to training duration, along pairs that differ only in
    duration: which rule carries the shorter run's optimum to the longer run for less than the threshold."""
    text = "warmup stays constant in steps as training gets longer (rather than growing with duration)"
    if not _swept(land, "warmup"):
        return _answer(text, INCONCLUSIVE, "warmup was not swept")
    pairs = _data_pairs(land, "warmup")
    if not pairs:
        return _answer(text, INCONCLUSIVE, "no two scales differ only in training duration")
    rows = []
    for short, long in pairs:
        stretch = land.scales.loc[long, "duration"] / land.scales.loc[short, "duration"]
        optimum = land.optima["warmup"][short].refined
        rows.append(
            {
                "shorter": short, "longer": long, "duration_ratio": float(stretch),
                "regret_constant": land.regret("warmup", optimum, long)[0],
                "regret_proportional": land.regret("warmup", optimum * stretch, long)[0],
                "threshold": thresholds[long], "required": required(long),
            }
        )
    constant_fits = all(r["regret_constant"] <= r["threshold"] for r in rows)
    proportional_fits = all(r["regret_proportional"] <= r["threshold"] for r in rows)
    constant_fails = any(r["regret_constant"] - r["threshold"] > r["required"] for r in rows)
    if constant_fits and proportional_fits:
        why = "constant and growing warmup both cost less than the threshold at the longer run: they fit equally well"
        return _answer(text, INCONCLUSIVE, why, pairs=rows)
    if constant_fits:
        why = "the shorter run's warmup costs less than the threshold at the longer run; growing it does not"
        return _answer(text, SUPPORTED, why, pairs=rows)
    if constant_fails:
        also = "; warmup growing with duration fits" if proportional_fits else " (growing with duration does too)"
        why = "a constant warmup costs significantly above the threshold" + also
        return _answer(text, CONTRADICTED, why, pairs=rows)
    why = "a constant warmup costs above the threshold, within the noise"
    return _answer(text, INCONCLUSIVE, why, pairs=rows)
