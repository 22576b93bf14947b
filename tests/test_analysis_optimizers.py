"""The analysis of other optimizers' run tables: their hyperparameter names get their own natural axes."""

from __future__ import annotations

import pytest

from optsweep.analysis import analyze_sensitivity, fit_scaling_laws
from synthetic_tables import Truth, constant, run_table, scale_grid, sqrt2_grid

SCALES = scale_grid([256, 512], [2e9, 8e9])


def momentum_by_data(scale) -> float:
    return 1 - 0.08 * (scale.tokens / 2e9) ** -0.5


# Muon's names: its lr follows 1/width, its momentum moves with data (on the log(1 - x) axis), the AdamW
# part's lr has a fixed optimum the loss cares about.
MUON = Truth(
    optimum={"lr": lambda s: 8.0 / s.width, "momentum": momentum_by_data, "adam_lr": constant(3e-3)},
    curvature={"lr": 0.2, "momentum": 0.05, "adam_lr": 0.1},
    grid={"lr": sqrt2_grid(4e-3, 1e-1), "momentum": [0.8, 0.9, 0.95, 0.98, 0.99],
          "adam_lr": sqrt2_grid(1e-3, 1e-2)},
)


@pytest.fixture(scope="module")
def muon() -> dict:
    return analyze_sensitivity(run_table(MUON, SCALES))


def test_muon_names_are_judged_on_their_natural_axes(muon):
    assert list(muon["hyperparameters"]) == ["lr", "adam_lr", "momentum"]  # AdamW's order first, then the others
    assert muon["sensitive"] == ["momentum"]
    momentum = muon["hyperparameters"]["momentum"]
    assert momentum["shift_cause"] == "data"
    # exact only when the quadratic is fitted on log(1 - momentum), the axis the truth is a parabola on
    for scale in SCALES:
        assert momentum["optimum"][scale.name]["refined"] == pytest.approx(momentum_by_data(scale), abs=1e-9)
    adam_lr = muon["hyperparameters"]["adam_lr"]
    assert adam_lr["loss_sensitive"] and not adam_lr["sensitive"]
    for optimum in adam_lr["optimum"].values():
        assert optimum["refined"] == pytest.approx(3e-3, rel=1e-6)
    assert muon["recommended"]["adam_lr"]["value"] == pytest.approx(3e-3, rel=0.2)


def test_a_momentum_law_is_fitted_on_one_minus_momentum(muon):
    laws = fit_scaling_laws(run_table(MUON, SCALES), muon, loss_law=False)
    law = laws["laws"]["momentum"]
    assert law["transform"] == "log(1 - h)"
    assert law["coefficients"]["D_exponent"]["estimate"] == pytest.approx(-0.5, abs=1e-6)
    assert set(laws["constants"]) == {"lr", "adam_lr"}


def test_hypotheses_about_names_muon_lacks_are_inconclusive(muon):
    answers = {a["hypothesis"]: a for a in muon["hypotheses"]}
    assert answers["epsilon is insensitive to scale"]["verdict"] == "inconclusive"
    assert answers["epsilon is insensitive to scale"]["evidence"]["why"] == "eps was not swept"
    assert "warmup was not swept" in answers[next(h for h in answers if h.startswith("warmup"))]["evidence"]["why"]
