"""Sensitivity classification on run tables generated from known truths."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from optsweep.analysis import analyze_sensitivity
from optsweep.analysis.optimum import _quadratic
from optsweep.params.sections import AnalysisSettings
from optsweep.results.documents import Provenance, SensitivityResult, as_json
from optsweep.testing.tables import Truth, constant, run_table, scale_grid, sqrt2_grid

# Two widths x two token budgets: every pair of scales differs in data only, in model only, or in both.
SCALES = scale_grid([256, 512], [2e9, 8e9])
SMALL_N, BIG_N = SCALES[0].n_params, SCALES[2].n_params


def beta2_by_data(scale) -> float:
    return 1 - 0.05 * (scale.tokens / 2e9) ** -0.8


def wd_by_model(scale) -> float:
    return 0.1 * (scale.n_params / SMALL_N) ** 0.5


# lr follows 1/width exactly; beta2 moves with data only; weight decay with model size only; clip and
# warmup have fixed optima the loss cares about; eps does not matter at all.
CAUSES = Truth(
    optimum={
        "lr": lambda s: 2.0 / s.width, "warmup": constant(2000), "beta2": beta2_by_data,
        "weight_decay": wd_by_model, "eps": constant(1e-15), "clip": constant(1.0),
    },
    curvature={"lr": 0.2, "warmup": 0.05, "beta2": 0.05, "weight_decay": 8.0, "eps": 0.0, "clip": 0.1},
    grid={
        "lr": sqrt2_grid(1e-3, 3e-2), "warmup": [500, 1000, 2000, 4000, 8000],
        "beta2": [0.9, 0.95, 0.98, 0.99, 0.995], "weight_decay": [0.0, 0.05, 0.1, 0.15, 0.2, 0.3],
        "eps": [1e-20, 1e-15, 1e-10], "clip": [0.0, 0.5, 1.0, 2.0],
    },
)


@pytest.fixture(scope="module")
def causes() -> SensitivityResult:
    return analyze_sensitivity(run_table(CAUSES, SCALES))


def test_only_hparams_whose_optimum_moves_and_matters_are_sensitive(causes):
    assert causes.sensitive == ["beta2", "weight_decay"]
    verdicts = causes.hyperparameters
    assert verdicts["clip"].loss_sensitive and not verdicts["clip"].optimum_shifts
    assert verdicts["warmup"].loss_sensitive and not verdicts["warmup"].optimum_shifts
    assert not verdicts["eps"].loss_sensitive
    for h in ("beta2", "weight_decay"):
        assert verdicts[h].sensitive and h not in causes.recommended
        assert h in verdicts[h].reason and "sensitive" in verdicts[h].reason


def test_shift_cause_is_data_when_only_d_moves_the_optimum_and_model_when_only_n_does(causes):
    verdicts = causes.hyperparameters
    assert verdicts["beta2"].shift_cause == "data"
    assert verdicts["weight_decay"].shift_cause == "model"
    assert verdicts["clip"].shift_cause == "none"
    pairs = verdicts["beta2"].evidence.pairs
    assert len(pairs["data"]) == 2 and len(pairs["model"]) == 2
    assert all(p["exceeds"] for p in pairs["data"]) and not any(p["exceeds"] for p in pairs["model"])


def test_lr_compared_after_the_width_rule(causes):
    lr = causes.hyperparameters["lr"]
    assert lr.loss_sensitive and not lr.optimum_shifts and not lr.sensitive
    assert lr.evidence.width_rule == "inverse_width"
    worst = lr.evidence.worst_regret_by_rule
    assert worst["inverse_width"] < worst["inverse_sqrt_width"] < worst["none"]
    for scale, optimum in lr.optimum.items():
        assert optimum.lr_x_width == pytest.approx(2.0, rel=1e-6)
    recommended = causes.recommended["lr"]
    assert recommended.rule == "inverse_width" and recommended.reference_width == 256
    # a value that was run, within half a grid step of the truth at the reference width
    assert abs(math.log(recommended.value / (2.0 / 256))) <= math.log(2) / 4 + 1e-9


def test_refined_optimum_is_exact_on_a_quadratic_and_flagged_at_the_grid_edge(causes):
    beta2 = causes.hyperparameters["beta2"].optimum
    long_run = SCALES[1].name
    assert beta2[long_run].grid_value == 0.98
    assert beta2[long_run].refined == pytest.approx(beta2_by_data(SCALES[1]), abs=1e-9)
    assert not beta2[long_run].at_edge

    edge = Truth(
        optimum={"warmup": constant(20000), "lr": lambda s: 2.0 / s.width},
        curvature={"warmup": 0.05, "lr": 0.2},
        grid={"warmup": [500, 1000, 2000, 4000, 8000], "lr": sqrt2_grid(1e-3, 3e-2)},
    )
    warmup = analyze_sensitivity(run_table(edge, SCALES)).hyperparameters["warmup"]
    for optimum in warmup.optimum.values():
        assert optimum.at_edge and optimum.grid_value == optimum.refined == 8000
    assert warmup.evidence.at_edge == [s.name for s in SCALES] and "widen the grid" in warmup.reason


def test_the_document_carries_the_provenance_it_is_given(causes):
    assert causes.provenance.params_hash is None  # a bare call: no params file
    given = Provenance.now("hash-1", runs_table="runs.csv")
    assert analyze_sensitivity(run_table(CAUSES, SCALES), provenance=given).provenance == given


def test_original_rule_side_by_side(causes):
    verdicts = causes.hyperparameters
    assert verdicts["weight_decay"].original_rule.stable is False
    assert as_json(verdicts["clip"].original_rule) == {
        "stable": True, "value": 1.0, "common_values": [1.0], "window": "per-scale threshold", "why_differs": None
    }
    assert causes.recommended["clip"].value == 1.0
    assert causes.recommended["warmup"].value == 2000


def test_fixed_optimum_never_sensitive_even_when_the_grid_optimum_drifts():
    # The optimum drifts from 0.12 to 0.13: the best grid value jumps from 0.1 to 0.15, but carrying one
    # scale's optimum to the other costs less than the threshold, so weight decay is not sensitive.
    drift = Truth(
        optimum={"weight_decay": lambda s: 0.12 if s.n_params == SMALL_N else 0.13, "clip": constant(1.0)},
        curvature={"weight_decay": 8.0, "clip": 0.1},
        grid={"weight_decay": [0.0, 0.05, 0.1, 0.15, 0.2], "clip": [0.0, 0.5, 1.0, 2.0]},
    )
    for noise_seed in range(8):
        table = run_table(drift, SCALES, noise=0.001 if noise_seed else 0.0, seed=noise_seed)
        verdict = analyze_sensitivity(table).hyperparameters
        wd = verdict["weight_decay"]
        assert wd.loss_sensitive and not wd.sensitive, wd.reason
        assert not verdict["clip"].sensitive, verdict["clip"].reason
        if noise_seed == 0:
            grid_values = {o.grid_value for o in wd.optimum.values()}
            assert grid_values == {0.1, 0.15}
            assert 0 < max(r["regret"] for r in wd.evidence.regrets) < min(wd.evidence.thresholds.values())


def test_full_grid_gives_the_same_optima_as_slices():
    truth = Truth(
        optimum={"lr": lambda s: 2.0 / s.width, "beta2": beta2_by_data, "weight_decay": constant(0.1)},
        curvature={"lr": 0.2, "beta2": 0.05, "weight_decay": 8.0},
        grid={"lr": sqrt2_grid(4e-3, 1.6e-2), "beta2": [0.9, 0.95, 0.98, 0.99], "weight_decay": [0.0, 0.1, 0.2]},
    )
    from_slices = analyze_sensitivity(run_table(truth, SCALES))
    from_grid = analyze_sensitivity(run_table(truth, SCALES, design="grid"))
    assert from_grid.sensitive == from_slices.sensitive == ["beta2"]
    for h in truth.grid:
        for scale, optimum in from_slices.hyperparameters[h].optimum.items():
            assert from_grid.hyperparameters[h].optimum[scale].refined == pytest.approx(optimum.refined)


def test_threshold_is_relative_or_absolute_and_never_raised_to_the_noise():
    truth = Truth(
        optimum={"clip": constant(1.0), "weight_decay": wd_by_model},
        curvature={"clip": 0.1, "weight_decay": 30.0},
        grid={"clip": [0.0, 0.5, 1.0, 1.5], "weight_decay": [0.0, 0.1, 0.2, 0.3]},
    )
    quiet = run_table(truth, SCALES)
    relative = analyze_sensitivity(quiet)
    for scale, info in relative.scales.items():
        assert relative.threshold.per_scale[scale] == pytest.approx(0.0025 * info.best_loss)
    assert relative.noise.relative_std == 0.0  # an exact quadratic surface: its grid differences cancel

    absolute = analyze_sensitivity(quiet, AnalysisSettings(threshold=0.05, threshold_kind="absolute"))
    assert set(absolute.threshold.per_scale.values()) == {0.05}
    # the common weight decay (0.15) costs 30 * 0.05^2 = 0.075 > 0.05 at both widths: still sensitive;
    # a step of clip costs 0.1 * 0.5^2 = 0.025, which no longer matters
    assert absolute.sensitive == ["weight_decay"]
    assert not absolute.hyperparameters["clip"].loss_sensitive

    noisy = run_table(truth, SCALES, noise=0.03, seeds=4, seed=1)
    measured = analyze_sensitivity(noisy)
    noise = measured.noise
    assert measured.noise_source == "seeds"
    assert noise.std == pytest.approx(0.03, rel=0.3)
    # the noise of a difference between two configs run on the same seed: sqrt(2) x 0.03 for independent runs
    assert noise.paired_std == pytest.approx(0.03 * math.sqrt(2), rel=0.3)
    # the noise enters the test, never the threshold: the threshold stays the configured one, and the
    # output warns that a difference between two configs scatters by more than it
    for scale, per_scale in noise.per_scale.items():
        threshold = measured.threshold.per_scale[scale]
        assert threshold == pytest.approx(0.0025 * measured.scales[scale].best_loss)
        assert per_scale.difference_std > threshold
    assert measured.warnings and "noise (seeds)" in measured.warnings[0]
    # without seed labels repeated configs still measure the noise of one run
    unlabelled = analyze_sensitivity(noisy.drop(columns="seed"))
    assert unlabelled.noise.paired_std is None and unlabelled.noise.std == pytest.approx(0.03, rel=0.3)


def test_a_stated_noise_decides_over_seeds_and_none_is_warned_about():
    truth = Truth(optimum={"weight_decay": wd_by_model}, curvature={"weight_decay": 30.0},
                  grid={"weight_decay": [0.0, 0.1, 0.2, 0.3]})
    noisy = run_table(truth, SCALES, noise=0.03, seeds=4, seed=1)
    stated = analyze_sensitivity(noisy, AnalysisSettings(noise=0.001, noise_kind="absolute"))
    assert stated.noise_source == "stated" and stated.noise.estimates["seeds"] is not None
    assert all(v.config_std == 0.001 for v in stated.noise.per_scale.values())
    # three grid values per scale and one seed: no four neighbours, no seeds, nothing stated
    short = run_table(Truth(optimum={"weight_decay": wd_by_model}, curvature={"weight_decay": 30.0},
                            grid={"weight_decay": [0.1, 0.15, 0.2]}), SCALES)
    unmeasured = analyze_sensitivity(short)
    assert unmeasured.noise_source == "none" and "decides every verdict alone" in unmeasured.warnings[0]
    assert "no noise was measured" in unmeasured.hyperparameters["weight_decay"].reason


def test_configs_are_compared_on_the_seeds_they_share():
    # Common random numbers: every run is at seed 0; the best three configs of each scale were also run on
    # seeds 1 and 2, which move every run's loss a lot (0.2, -0.15) but the differences between configs little.
    truth = Truth(
        optimum={"lr": lambda s: 2.0 / s.width, "weight_decay": wd_by_model, "clip": constant(1.0)},
        curvature={"lr": 0.2, "weight_decay": 8.0, "clip": 0.1},
        grid={"lr": sqrt2_grid(1e-3, 3e-2), "weight_decay": [0.0, 0.1, 0.2, 0.3], "clip": [0.0, 0.5, 1.0, 1.5]},
    )
    base = run_table(truth, SCALES)
    rng = np.random.default_rng(0)
    extra = [
        best.assign(seed=seed, loss=best["loss"] + shift + rng.normal(0, 0.002, len(best)))
        for _, rows in base.groupby("scale")
        for best in [rows.nsmallest(3, "loss")]
        for seed, shift in ((1, 0.2), (2, -0.15))
    ]
    crn = analyze_sensitivity(pd.concat([base, *extra]))
    single_seed = analyze_sensitivity(base)
    assert crn.noise.std > 0.1  # the seed moves every run...
    assert crn.noise.paired_std < 0.01  # ...but hardly the difference between two configs
    assert crn.threshold.per_scale == single_seed.threshold.per_scale
    assert crn.sensitive == single_seed.sensitive == ["weight_decay"]
    for h, verdict in single_seed.hyperparameters.items():
        for scale, optimum in verdict.optimum.items():  # the same optima (their errors use the seeds' noise)
            assert crn.hyperparameters[h].optimum[scale].refined == optimum.refined


def test_diverged_runs_count_as_a_costly_step():
    truth = Truth(
        optimum={"lr": lambda s: 2.0 / s.width, "weight_decay": constant(0.1)},
        curvature={"lr": 0.001, "weight_decay": 8.0},
        grid={"lr": sqrt2_grid(1e-3, 3e-2), "weight_decay": [0.0, 0.1, 0.2]},
    )
    # Almost flat in lr, but one notch above the best grid value diverges at every scale.
    best = {s.name: truth.best_grid_config(s)["lr"] for s in SCALES}
    table = run_table(truth, SCALES, diverged=lambda s, c: c["lr"] > 1.1 * best[s.name])
    lr = analyze_sensitivity(table).hyperparameters["lr"]
    assert lr.loss_sensitive
    assert all(g["diverged_step"] for g in lr.evidence.loss_gaps.values())


@pytest.mark.parametrize("steps", [(-2, -1, 0, 1, 2), (-1, 0, 1), (-2, -1, 0)])
def test_a_fitted_optimum_states_the_scatter_its_vertex_really_has(steps):
    # Repeated noisy slices of one quadratic: the reported standard error of the vertex matches how far the
    # vertices scatter (the median over draws: a ratio's tails make the plain std unstable).
    rng = np.random.default_rng(0)
    x = np.array(steps) * math.log(2)
    vertices, stderrs = [], []
    for _ in range(2000):
        curve = _quadratic(x, 3.0 + 0.15 * x**2 + rng.normal(0.0, 0.006, len(x)), 0.006)
        vertices.append(curve.vertex)
        stderrs.append(curve.vertex_stderr())
    spread = 1.4826 * np.median(np.abs(np.array(vertices) - np.median(vertices)))
    assert np.median(stderrs) == pytest.approx(spread, rel=0.15)


def test_the_common_value_is_one_every_scale_can_run():
    """A warmup longer than a scale's runs cannot serve that scale: the common value stays below its steps."""
    steps = {2e9: 48, 8e9: 2000}
    short_runs = Truth(
        optimum={"warmup": lambda s: 30 if s.tokens == 2e9 else 300},
        curvature={"warmup": 0.05},
        grid={"warmup": lambda s: [8, 15, 30, 45] if s.tokens == 2e9 else [75, 150, 300, 600, 1200]},
    )
    table = run_table(short_runs, SCALES)
    table["steps"] = table["tokens"].map(steps)
    test = analyze_sensitivity(table).hyperparameters["warmup"].test
    assert test["common_value"] < 48
    assert any("limited to what every scale can run" in note and "48 steps" in note for note in test["notes"])
    long_scale = next(s for s in SCALES if s.tokens == 8e9).name
    assert test["per_scale"][long_scale]["regret"] > 0  # carrying it to the long runs costs what it costs
