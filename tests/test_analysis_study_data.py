"""Failures seen on real study data, each reproduced on a synthetic table from a known truth.

Blown-up runs with finite losses, refinements that contradict the measurements, noise without seeds,
margins inside the noise, missing cells of a 2-D grid, degenerate loss laws, D-only laws, and tables from
elsewhere (empty losses, failed runs, budgets varying per row, batch sizes in tokens).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from optsweep.analysis import analyze_sensitivity, fit_scaling_laws, load_runs_table
from optsweep.cli import main
from optsweep.params.sections import AnalysisSettings
from optsweep.results.documents import LawPhaseInputs, ScaleOptimum, SensitivityResult
from optsweep.testing.tables import CHINCHILLA, Truth, constant, llama_scale, run_table, scale_grid, sqrt2_grid

SCALES = scale_grid([256, 512], [2e9, 8e9])


def lr_by_width(scale) -> float:
    return 2.0 / scale.width


LR_WD = Truth(
    optimum={"lr": lr_by_width, "weight_decay": constant(0.1)},
    curvature={"lr": 0.2, "weight_decay": 8.0},
    grid={"lr": sqrt2_grid(1e-3, 3e-2), "weight_decay": [0.0, 0.1, 0.2]},
)
ONLY_LR = LawPhaseInputs(sensitive=["lr"], recommended={})


def lr_optimum(result: SensitivityResult, scale: str) -> ScaleOptimum:
    return result.hyperparameters["lr"].optimum[scale]


def blow_up_lr(table: pd.DataFrame, scale: str, steps_above_best: int, loss: float) -> tuple[pd.DataFrame, float]:
    """Give the run `steps_above_best` lr grid values above the best at `scale` a finite, blown-up loss."""
    rows = table[(table["scale"] == scale) & (table["weight_decay"] == 0.1)].sort_values("lr")
    best = rows["loss"].idxmin()
    position = list(rows.index).index(best) + steps_above_best
    table = table.copy()
    table.loc[rows.index[position], "loss"] = loss
    return table, float(rows.loc[best, "lr"])


def test_a_blown_up_run_with_a_finite_loss_never_enters_the_refinement():
    scale = SCALES[0].name
    table, best_lr = blow_up_lr(run_table(LR_WD, SCALES), scale, steps_above_best=2, loss=7.5)
    result = analyze_sensitivity(table)
    assert result.blown_up.per_scale == {s.name: int(s.name == scale) for s in SCALES}
    assert result.scales[scale].blown_up == 1
    optimum = lr_optimum(result, scale)
    # the parabola through the remaining runs of the U is exact: the truth, between the best's neighbours
    assert optimum.estimate == "fitted"
    assert optimum.refined == pytest.approx(lr_by_width(SCALES[0]), rel=1e-6)
    assert best_lr / math.sqrt(2) < optimum.refined < best_lr * math.sqrt(2)


def test_a_quadratic_that_misses_its_runs_narrows_and_never_passes_a_neighbour_measured_worse():
    # With the divergence rule switched off (a rise no table reaches) two blown-up runs above the best enter
    # the window, and the parabola through five runs misses them by far more than the noise: the window
    # narrows to the best and its two neighbours, whose vertex cannot pass a neighbour measured worse.
    scale = SCALES[0].name
    table, best_lr = blow_up_lr(run_table(LR_WD, SCALES), scale, steps_above_best=1, loss=7.5)
    table, _ = blow_up_lr(table, scale, steps_above_best=2, loss=7.5)
    result = analyze_sensitivity(table, AnalysisSettings(divergence_rise=100.0))
    optimum = lr_optimum(result, scale)
    assert result.blown_up.per_scale[scale] == 0
    assert optimum.refinement == "vertex of a quadratic through 3 runs"
    assert best_lr / math.sqrt(2) < optimum.refined < best_lr * math.sqrt(2)


def test_noise_without_seeds_is_measured_from_grid_differences_and_warned_about():
    # A dense lr x batch size grid, one run per cell, 1.3% multiplicative noise (five times the threshold).
    truth = Truth(
        optimum={"lr": lr_by_width, "batch_size": lambda s: 64 * (s.tokens / 2e9) ** 0.5},
        curvature={"lr": 0.2, "batch_size": 0.05},
        grid={"lr": sqrt2_grid(2e-3, 2e-2), "batch_size": [16, 32, 64, 128, 256, 512]},
    )
    table = run_table(truth, SCALES, design="grid", relative_noise=0.013, seed=5).drop(columns="seed")
    result = analyze_sensitivity(table)
    noise = result.noise
    assert noise.sources == ["differences"] and noise.seeds is None
    assert 0.013 / 1.3 <= noise.relative_std <= 0.013 * 1.3
    for scale, info in result.scales.items():
        assert noise.per_scale[scale].config_std > 0.0025 * info.best_loss
        assert result.threshold.per_scale[scale] == pytest.approx(0.0025 * info.best_loss)  # not raised
    assert result.warnings and result.warnings[0].startswith("noise (differences):")


def clip_table(margin: float, noise: float) -> pd.DataFrame:
    """Clip's optimum moves between two model sizes by just enough that carrying it costs the threshold +
    `margin`; each config is run on two seeds whose losses sit `noise` either side of the truth."""
    grid = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
    curvature = 0.1

    def optimum(scale) -> float:
        return 1.0 if scale.width == 256 else 1.0 + shift

    loss_at_small = CHINCHILLA["E"] + CHINCHILLA["A"] / SCALES[2].n_params ** CHINCHILLA["alpha"]
    loss_at_small += CHINCHILLA["B"] / SCALES[2].tokens ** CHINCHILLA["beta"]
    threshold = 0.0025 * loss_at_small  # at the larger model, shortest run: where the regret is read
    # the common value sits halfway between the two optima, where it costs the threshold + `margin`
    shift = 2 * math.sqrt((threshold + margin) / curvature)
    truth = Truth(
        optimum={"clip": optimum, "weight_decay": constant(0.1)},
        curvature={"clip": curvature, "weight_decay": 8.0},
        grid={"clip": grid, "weight_decay": [0.0, 0.1, 0.2]},
    )
    table = run_table(truth, SCALES, seeds=2)
    signs = np.where(np.random.default_rng(0).random(len(table) // 2) < 0.5, -1.0, 1.0).repeat(2)
    signs[1::2] *= -1  # the two seeds of a config sit either side of the truth: their mean is exact
    return table.assign(loss=table["loss"] + noise * signs)


def test_a_clip_margin_inside_the_noise_is_inconclusive_and_gets_no_law():
    result = analyze_sensitivity(clip_table(margin=0.0005, noise=0.002))
    clip = result.hyperparameters["clip"]
    assert clip.verdict == "inconclusive" and not clip.sensitive and result.inconclusive == ["clip"]
    assert 0 < clip.margin < clip.required_margin and clip.noise > 0
    assert "inconclusive" in clip.reason and "margin" in clip.reason
    assert result.recommended["clip"].verdict == "inconclusive"
    clip_hypothesis = next(h for h in result.hypotheses if h.hypothesis.startswith("clip"))
    # clip = 1 itself is far from the larger model's optimum: that hypothesis fails whatever the shift's verdict
    assert clip_hypothesis.verdict == "contradicted" and clip_hypothesis.sensitivity_verdict == "inconclusive"
    laws = fit_scaling_laws(clip_table(margin=0.0005, noise=0.002), result, loss_law=False)
    assert "clip" not in laws.laws and "inconclusive" in laws.skipped["clip"]
    assert laws.constants["clip"].value in (1.0, 1.25)

    # the same margin without noise is a measured shift
    quiet = analyze_sensitivity(clip_table(margin=0.0005, noise=0.0)).hyperparameters["clip"]
    assert quiet.verdict == "sensitive" and 0 < quiet.margin < 0.002


def test_a_missing_cell_of_a_2d_grid_is_not_an_edge():
    truth = Truth(
        optimum={"lr": lr_by_width, "batch_size": constant(128)},
        curvature={"lr": 0.2, "batch_size": 0.05},
        grid={"lr": [v for v in sqrt2_grid(2e-3, 2e-2)], "batch_size": [32, 64, 128, 256, 512]},
    )
    table = run_table(truth, SCALES, design="grid")
    scale = SCALES[0]
    best = truth.best_grid_config(scale)
    above = min(v for v in truth.grid["lr"] if v > best["lr"])
    missing = (table["scale"] == scale.name) & (table["lr"] > best["lr"]) & (table["batch_size"] == 128)
    assert missing.sum() >= 1 and above in set(table.loc[missing, "lr"])
    result = analyze_sensitivity(table[~missing])
    optimum = lr_optimum(result, scale.name)
    # no complete block around the best for a surface: the slice through the best is fitted (exact here)
    assert not optimum.at_edge and optimum.edge is None
    assert optimum.refinement.startswith("vertex of a quadratic")
    assert optimum.refined == pytest.approx(lr_by_width(scale), rel=1e-6)
    # where the grid is complete the optimum comes from the local lr x batch size surface
    assert lr_optimum(result, SCALES[1].name).refinement.startswith("local surface over lr x batch_size")


def test_a_degenerate_loss_law_is_rejected_with_its_reason():
    # No irreducible loss at all: the best fit puts E near 0, which no study can offer as a baseline.
    truth = Truth(
        optimum={"lr": lr_by_width}, curvature={"lr": 0.2},
        grid={"lr": lambda s: [2.0 / s.width * 2 ** (k / 2) for k in range(-3, 4)]},
        loss_law={**CHINCHILLA, "E": 0.0},
    )
    scales = scale_grid([256, 512, 1024, 2048], [2e9, 8e9, 3.2e10])
    laws = fit_scaling_laws(run_table(truth, scales), ONLY_LR)
    assert laws.loss_law["form"] is None and "irreducible loss" in laws.loss_law["reason"]
    assert any(w.startswith("loss law rejected") for w in laws.warnings)


def test_a_d_only_batch_size_law_is_recovered_as_d_only():
    def batch(scale) -> float:
        return 0.02 * scale.tokens**0.4

    scales = scale_grid([256, 512], [2e9, 8e9, 3.2e10])
    truth = Truth(
        optimum={"batch_size": batch, "lr": lr_by_width}, curvature={"batch_size": 0.05, "lr": 0.2},
        grid={"batch_size": [2**k for k in range(5, 13)], "lr": sqrt2_grid(2e-3, 2e-2)},
    )
    settings = AnalysisSettings(laws_for=["batch_size"])
    table = run_table(truth, scales)
    laws = fit_scaling_laws(table, analyze_sensitivity(table, settings), loss_law=False, settings=settings)
    law = laws.laws["batch_size"]
    assert law.kind == "D"
    assert law.coefficients["D_exponent"].estimate == pytest.approx(0.4, abs=0.02)
    assert min(f.loo_rmse for k, f in law.forms.items() if k in ("N", "compute")) > 5 * law.loo_rmse


def test_a_law_asked_for_is_fitted_and_warned_about_when_it_fits_poorly():
    # lr does not move with scale at all, but is fitted on request: its exponents' intervals span 0.
    truth = Truth(optimum={"lr": constant(4e-3)}, curvature={"lr": 0.2}, grid={"lr": sqrt2_grid(1e-3, 3e-2)})
    scales = scale_grid([256, 512], [2e9, 8e9, 3.2e10])
    table = run_table(truth, scales, noise=0.003, seed=2)
    settings = AnalysisSettings(laws_for=["lr"])
    laws = fit_scaling_laws(table, analyze_sensitivity(table, settings), loss_law=False, settings=settings)
    assert laws.laws["lr"].asked and "lr" not in laws.constants
    assert any("spans 0" in w and w.startswith("law: lr") for w in laws.warnings)


def test_tables_from_elsewhere_failed_rows_varying_budgets_and_batch_sizes_in_tokens(tmp_path):
    truth = Truth(
        optimum={"lr": lr_by_width, "batch_size": constant(128)},
        curvature={"lr": 0.2, "batch_size": 0.05},
        grid={"lr": sqrt2_grid(2e-3, 2e-2), "batch_size": [32, 64, 128, 256, 512]},
    )
    table = run_table(truth, SCALES, design="grid")
    table["seq_len"] = 1024
    table["steps"] = (table["tokens"] / (table["batch_size"] * 1024)).round()
    table["tokens"] = table["steps"] * table["batch_size"] * 1024  # rounded to whole steps: varies per row
    table.loc[5, ["status", "loss"]] = ["failed", np.nan]
    path = tmp_path / "runs.csv"
    table.to_csv(path, index=False)
    loaded = load_runs_table(path)
    assert len(loaded) == len(table) - 1 and loaded["loss"].notna().all()
    assert set(loaded["batch_size"]) == {b * 1024 for b in truth.grid["batch_size"]}
    result = analyze_sensitivity(loaded)
    assert result.batch_size_unit == "tokens"
    for scale in SCALES:
        assert result.scales[scale.name].tokens == pytest.approx(scale.tokens, rel=0.01)
        assert result.hyperparameters["batch_size"].optimum[scale.name].refined == pytest.approx(128 * 1024)


def test_analyze_cli_takes_an_analysis_only_params_file_and_flags(tmp_path, capsys):
    scale = SCALES[0].name
    table, _ = blow_up_lr(run_table(LR_WD, SCALES), scale, steps_above_best=2, loss=7.5)
    path = tmp_path / "runs.csv"
    table.to_csv(path, index=False)
    settings = tmp_path / "analysis.yaml"
    settings.write_text("analysis:\n  threshold: 0.05\n  threshold_kind: absolute\n")
    assert main(["analyze", str(path), "--out", str(tmp_path / "a"), "--params", str(settings)]) == 0
    written = json.loads((tmp_path / "a/sensitivity.json").read_text())
    assert set(written["threshold"]["per_scale"].values()) == {0.05} and written["blown_up"]["per_scale"][scale] == 1

    argv = ["analyze", str(path), "--out", str(tmp_path / "b"), "--params", str(settings),
            "--threshold", "0.01", "--divergence-rise", "2.0"]
    assert main(argv) == 0
    written = json.loads((tmp_path / "b/sensitivity.json").read_text())
    assert written["threshold"]["value"] == 0.01 and written["threshold"]["kind"] == "absolute"
    assert written["blown_up"] == {"rise": 2.0, "per_scale": {s.name: 0 for s in SCALES}}
    capsys.readouterr()

    settings.write_text("analysis:\n  divergence_rise: -1\n")
    assert main(["analyze", str(path), "--out", str(tmp_path / "c"), "--params", str(settings)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "analysis.divergence_rise" in err and str(settings) in err
    settings.write_text("threshold: 0.05\n")
    assert main(["analyze", str(path), "--out", str(tmp_path / "c"), "--params", str(settings)]) == 2
    assert "'analysis:' mapping" in capsys.readouterr().err


def test_scale_sized_from_the_brief_still_has_a_noise_free_lr_law():
    # guard: noise-free truths give zero measured noise, so nothing becomes inconclusive
    scales = [llama_scale(f"w{w}_t{t:.0e}", w, t) for w in (256, 512, 1024) for t in (2e9, 8e9)]
    result = analyze_sensitivity(run_table(LR_WD, scales))
    assert result.noise.relative_std < 1e-9 and result.inconclusive == [] and result.warnings == []


def test_a_full_2d_grid_is_refined_on_its_local_surface_not_one_slice():
    # lr and batch size interact: the best lr grows as sqrt(batch size). The joint optimum (4e-3, 181) lies
    # between batch-size grid values, so the slice through the best batch size has a shifted lr optimum.
    lr_star, batch_star, rows = 4e-3, 181.0, []
    for scale in SCALES:
        for lr in sqrt2_grid(1e-3, 1.6e-2):
            for batch in (32, 64, 128, 256, 512, 1024):
                y = math.log(batch / batch_star)
                x = math.log(lr / lr_star) - 0.5 * y
                loss = 3.0 + 0.2 * x**2 + 0.05 * y**2
                rows.append({"scale": scale.name, "n_params": scale.n_params, "tokens": scale.tokens,
                             "width": scale.width, "lr": lr, "batch_size": batch, "loss": loss})
    result = analyze_sensitivity(pd.DataFrame(rows))
    for scale in SCALES:
        optimum = lr_optimum(result, scale.name)
        assert optimum.refinement.startswith("local surface over lr x batch_size")
        assert optimum.refined == pytest.approx(lr_star, rel=1e-6)
        batch = result.hyperparameters["batch_size"].optimum[scale.name]
        assert batch.refined == pytest.approx(batch_star, rel=1e-6)


def test_noisy_edge_optima_that_carry_the_trend_keep_the_exponents_inside_their_intervals():
    # The two largest lr optima lie above the grid; the run-to-run noise is 0.2% of the loss, one seed.
    scales = scale_grid([256, 512, 1024], [2e9, 8e9])

    def lr_star(scale) -> float:
        return 1.79 * scale.n_params**-0.713 * scale.tokens**0.307

    grid = [v for v in sqrt2_grid(min(map(lr_star, scales)) / 4, max(map(lr_star, scales)) * 4)
            if v < sorted(map(lr_star, scales))[-2]]
    truth = Truth(optimum={"lr": lr_star}, curvature={"lr": 0.2}, grid={"lr": grid})
    table = run_table(truth, scales, relative_noise=0.002, seed=0)
    law = fit_scaling_laws(table, ONLY_LR, loss_law=False).laws["lr"]
    assert law.n_censored >= 1 and law.method.startswith("censored")
    for name, value in (("N_exponent", -0.713), ("D_exponent", 0.307)):
        low, high = law.forms["N_D"].coefficients[name]["ci95"]
        assert low <= value <= high
