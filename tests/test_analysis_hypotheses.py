"""The brief's hypotheses, judged on tables whose truth is known."""

from __future__ import annotations

import pytest

from optsweep.analysis import analyze_sensitivity
from optsweep.results.documents import HypothesisAnswer
from optsweep.testing.tables import Truth, constant, run_table, scale_grid, sqrt2_grid

SCALES = scale_grid([256, 512], [2e9, 8e9])  # widths x2, token budgets x4

GRIDS = {
    "lr": sqrt2_grid(1e-3, 3e-2),
    "warmup": [250, 500, 1000, 2000, 4000, 8000, 16000],
    "beta1": [0.8, 0.9, 0.95, 0.98],
    "beta2": [0.9, 0.95, 0.98, 0.99, 0.995],
    "weight_decay": [0.0, 0.05, 0.1, 0.15, 0.2, 0.3],
    "eps": [1e-20, 1e-18, 1e-16, 1e-14, 1e-12, 1e-10],
    "clip": [0.0, 0.5, 1.0, 1.5, 2.0],
}
CURVATURE = {"lr": 0.2, "warmup": 0.05, "beta1": 0.05, "beta2": 0.05, "weight_decay": 8.0, "eps": 0.01, "clip": 0.1}


def verdicts(**optimum) -> dict[str, HypothesisAnswer]:
    """Hypothesis -> answer for a truth with the given optima (hparams not given are not swept)."""
    truth = Truth(
        optimum=optimum,
        curvature={h: CURVATURE[h] for h in optimum},
        grid={h: GRIDS[h] for h in optimum},
    )
    answers = analyze_sensitivity(run_table(truth, SCALES)).hypotheses
    return {a.hypothesis: a for a in answers}


def answer(answers: dict[str, HypothesisAnswer], starts: str) -> HypothesisAnswer:
    return next(a for text, a in answers.items() if text.startswith(starts))


def test_lr_inversely_proportional_to_width():
    inverse = verdicts(lr=lambda s: 2.0 / s.width, weight_decay=constant(0.1))
    lr = answer(inverse, "the learning rate scales inversely with width")
    assert lr.verdict == "supported"
    assert lr.evidence["lr_x_width"]["w256_d0"] == pytest.approx(lr.evidence["lr_x_width"]["w512_d0"])
    assert lr.evidence["pairs"] == "model-only"

    sqrt = verdicts(lr=lambda s: 0.1 / s.width**0.5, weight_decay=constant(0.1))
    lr = answer(sqrt, "the learning rate scales inversely with width")
    assert lr.verdict == "contradicted"
    assert lr.evidence["best_rule"] == "inverse_sqrt_width"
    assert lr.evidence["worst_regret_minus_threshold"]["inverse_width"] > 0

    beyond_the_grid = verdicts(lr=lambda s: 1.0 / s.width**0.5, weight_decay=constant(0.1))
    lr = answer(beyond_the_grid, "the learning rate scales inversely with width")
    assert lr.verdict == "inconclusive" and "grid edge" in lr.evidence["why"]


def test_weight_decay_and_clipping_values_optimal_everywhere():
    fixed = verdicts(weight_decay=constant(0.1), clip=constant(1.0))
    assert answer(fixed, "weight_decay = 0.1").verdict == "supported"
    assert answer(fixed, "clip = 1").verdict == "supported"

    moving = verdicts(weight_decay=lambda s: 0.1 * (s.width / 256), clip=constant(0.5))
    wd = answer(moving, "weight_decay = 0.1")
    assert wd.verdict == "contradicted"
    assert wd.evidence["regret"]["w512_d0"] > wd.evidence["thresholds"]["w512_d0"]
    assert answer(moving, "clip = 1").verdict == "contradicted"

    unswept = verdicts(lr=lambda s: 2.0 / s.width, weight_decay=constant(0.1))
    assert answer(unswept, "clip = 1").verdict == "inconclusive"


def test_eps_insensitive():
    flat = verdicts(eps=constant(1e-15), weight_decay=constant(0.1))
    assert answer(flat, "epsilon is insensitive").verdict == "supported"
    # "epsilon underflow": the optimal eps shrinks fast with width, and the loss cares.
    underflow = verdicts(eps=lambda s: 1e-14 * (s.width / 256) ** -4, weight_decay=constant(0.1))
    eps = answer(underflow, "epsilon is insensitive")
    assert eps.verdict == "contradicted" and eps.evidence["sensitivity"] == "sensitive"


def test_higher_betas_for_longer_training():
    longer_higher = verdicts(beta2=lambda s: 1 - 0.05 * (s.tokens / 2e9) ** -0.8, beta1=constant(0.9))
    beta2 = answer(longer_higher, "a higher beta2")
    assert beta2.verdict == "supported"
    assert all(p["optimum_longer"] > p["optimum_shorter"] for p in beta2.evidence["pairs"])
    assert len(beta2.evidence["pairs"]) == 2
    # beta1's optimum stays put although the loss cares: the conjecture does not hold for it
    assert answer(longer_higher, "a higher beta1").verdict == "contradicted"

    longer_lower = verdicts(beta2=lambda s: 1 - 0.02 * (s.tokens / 2e9) ** 0.8, beta1=constant(0.9))
    assert answer(longer_lower, "a higher beta2").verdict == "contradicted"


def test_warmup_constant_or_growing_with_duration():
    steady = verdicts(warmup=constant(2000), lr=lambda s: 2.0 / s.width)
    warmup = answer(steady, "warmup stays constant")
    assert warmup.verdict == "supported"
    assert all(p["regret_constant"] < p["threshold"] < p["regret_proportional"] for p in warmup.evidence["pairs"])

    growing = verdicts(warmup=lambda s: 1000 * s.tokens / 2e9, lr=lambda s: 2.0 / s.width)
    warmup = answer(growing, "warmup stays constant")
    assert warmup.verdict == "contradicted"
    assert "growing with duration fits" in warmup.evidence["why"]
    assert all(p["duration_ratio"] == 4 for p in warmup.evidence["pairs"])


def test_every_hypothesis_is_answered_and_unswept_ones_are_inconclusive():
    answers = verdicts(weight_decay=constant(0.1))
    assert len(answers) == 7
    assert {a.verdict for a in answers.values()} <= {"supported", "contradicted", "inconclusive"}
    for text in ("the learning rate", "clip = 1", "epsilon", "a higher beta1", "a higher beta2", "warmup"):
        assert answer(answers, text).verdict == "inconclusive"


def test_a_hypothesis_whose_two_alternatives_fit_equally_well_is_inconclusive():
    # The loss barely cares about warmup: constant and growing warmup both cost less than the threshold.
    truth = Truth(
        optimum={"warmup": constant(2000), "lr": lambda s: 2.0 / s.width},
        curvature={"warmup": 0.001, "lr": 0.2},
        grid={"warmup": GRIDS["warmup"], "lr": GRIDS["lr"]},
    )
    answers = analyze_sensitivity(run_table(truth, SCALES)).hypotheses
    warmup = next(a for a in answers if a.hypothesis.startswith("warmup"))
    assert warmup.verdict == "inconclusive" and "equally well" in warmup.evidence["why"]
    assert warmup.sensitivity_verdict == "insensitive"
