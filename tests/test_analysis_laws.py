"""Hyperparameter scaling laws, the loss law, predictions and `optsweep analyze` / `optsweep predict`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from optsweep.analysis import analyze_sensitivity, analyze_table, fit_scaling_laws, predict
from optsweep.analysis.law_fit import fit_hparam_law
from optsweep.cli import main
from optsweep.params.settings import ParamsError, load_params
from optsweep.results.documents import (
    LawPhaseInputs,
    PredictionInputs,
    RecommendedConstant,
    ScalingLaws,
    SensitivityResult,
)
from optsweep.testing.tables import CHINCHILLA, Truth, constant, llama_scale, run_table, scale_grid, sqrt2_grid

REPO = Path(__file__).resolve().parents[1]
STEP_LAW = {"prefactor": 1.79, "N": -0.713, "D": 0.307}  # Step Law (arXiv 2503.04715)


def step_law_lr(scale) -> float:
    return STEP_LAW["prefactor"] * scale.n_params ** STEP_LAW["N"] * scale.tokens ** STEP_LAW["D"]


# 4 model sizes x 3 data sizes; lr on a grid of sqrt(2) steps wide enough for every scale's optimum.
STEP_SCALES = scale_grid([256, 512, 1024, 2048], [2e9, 8e9, 3.2e10])
STEP_OPTIMA = [step_law_lr(s) for s in STEP_SCALES]
STEP_TRUTH = Truth(
    optimum={"lr": step_law_lr, "weight_decay": constant(0.1)},
    curvature={"lr": 0.2, "weight_decay": 8.0},
    grid={"lr": sqrt2_grid(min(STEP_OPTIMA) / 3, max(STEP_OPTIMA) * 3), "weight_decay": [0.0, 0.1, 0.2]},
)
ONLY_LR = LawPhaseInputs(sensitive=["lr"], recommended={})


@pytest.fixture(scope="module")
def step_law() -> tuple[SensitivityResult, ScalingLaws]:
    table = run_table(STEP_TRUTH, STEP_SCALES)
    sensitivity = analyze_sensitivity(table)
    return sensitivity, fit_scaling_laws(table, sensitivity)


def test_step_law_exponents_recovered_without_noise(step_law):
    sensitivity, laws = step_law
    assert sensitivity.sensitive == ["lr"]
    assert sensitivity.hyperparameters["lr"].shift_cause == "both"
    law = laws.laws["lr"]
    assert law.kind == "N_D" and not law.collinear
    assert law.coefficients["N_exponent"].estimate == pytest.approx(STEP_LAW["N"], abs=0.03)
    assert law.coefficients["D_exponent"].estimate == pytest.approx(STEP_LAW["D"], abs=0.03)
    assert law.n_points == 12 and law.r2 > 0.999
    assert law.loo_rmse < 0.01
    assert "N_exponent" in law.summary and law.form.startswith("lr* = 1.79 * N^-0.713 * D^0.307")
    assert laws.constants["weight_decay"].value == 0.1


def test_step_law_95_intervals_cover_the_truth_in_95_percent_of_noisy_repetitions():
    repetitions, covered = 200, 0
    for seed in range(repetitions):
        table = run_table(STEP_TRUTH, STEP_SCALES, noise=0.005, seed=seed)
        law = fit_scaling_laws(table, ONLY_LR, loss_law=False).laws["lr"]
        for name, truth in (("N_exponent", STEP_LAW["N"]), ("D_exponent", STEP_LAW["D"])):
            low, high = law.coefficients[name].ci95
            covered += low <= truth <= high
    coverage = covered / (2 * repetitions)
    band = 3 * math.sqrt(0.95 * 0.05 / repetitions)  # 3 binomial standard errors of one exponent's coverage
    print(f"95% interval coverage over {repetitions} noisy repetitions: {coverage:.3f}")
    assert 0.95 - band <= coverage <= 0.95 + band


def test_data_along_d_20n_falls_back_to_a_compute_law():
    scales = [llama_scale(f"w{w}", w, 20 * 96 * w**2) for w in (128, 192, 256, 384, 512, 768)]
    optima = [step_law_lr(s) for s in scales]
    truth = Truth(
        optimum={"lr": step_law_lr}, curvature={"lr": 0.2},
        grid={"lr": sqrt2_grid(min(optima) / 3, max(optima) * 3)},
    )
    law = fit_scaling_laws(run_table(truth, scales), ONLY_LR).laws["lr"]
    assert law.collinear and law.kind == "compute"
    assert "C = 6 N D" in law.note and "cannot be separated" in law.note
    # lr* = 1.79 (20)^0.307 N^(-0.713 + 0.307) and C = 120 N^2: the compute exponent is (-0.713 + 0.307) / 2
    assert law.coefficients["C_exponent"].estimate == pytest.approx((STEP_LAW["N"] + STEP_LAW["D"]) / 2, abs=0.03)


def test_betas_are_fitted_on_one_minus_beta():
    def beta2(s):
        return 1 - 0.4 * s.tokens**-0.1

    scales = scale_grid([256, 512], [2e9, 8e9, 3.2e10])
    truth = Truth(
        optimum={"beta2": beta2}, curvature={"beta2": 0.05},
        grid={"beta2": [0.9, 0.95, 0.97, 0.98, 0.99, 0.993, 0.995, 0.997, 0.999]},
    )
    laws = fit_scaling_laws(run_table(truth, scales), LawPhaseInputs(sensitive=["beta2"], recommended={}),
                            loss_law=False)
    law = laws.laws["beta2"]
    assert law.transform == "log(1 - h)" and law.form.startswith("1 - beta2* =")
    # a D-only truth is recovered as a D-only law (the N and D form fits as well, with one more exponent)
    assert law.kind == "D" and set(law.forms) == {"compute", "N", "D", "N_D"}
    assert law.coefficients["D_exponent"].estimate == pytest.approx(-0.1, abs=1e-6)
    assert law.forms["N_D"].coefficients["N_exponent"]["estimate"] == pytest.approx(0.0, abs=1e-6)
    assert law.forms["D"].loo_rmse < 1e-6 < law.forms["N"].loo_rmse
    predicted = predict(laws, n_params=1e7, tokens=1e10)
    assert predicted.hparams["beta2"] == pytest.approx(beta2(llama_scale("x", 320, 1e10)), abs=1e-6)


def test_optima_at_the_grid_edge_enter_the_law_as_censored_observations():
    # The grid stops two steps below the largest optimum. A vertex within one grid step beyond the runs is
    # extrapolated from the fitted curve; farther out, the best run (the top value) is a censored observation.
    scales = scale_grid([256, 512], [2e9, 8e9, 3.2e10])
    optima = [step_law_lr(s) for s in scales]
    grid = sqrt2_grid(min(optima) / 3, max(optima) * 3)
    truth = Truth(optimum={"lr": step_law_lr}, curvature={"lr": 0.2},
                  grid={"lr": [v for v in grid if v < max(optima) / 2]})
    top = max(truth.grid["lr"])
    at_edge = {s.name for s in scales if step_law_lr(s) > top * math.sqrt(2)}
    assert 1 <= len(at_edge) <= 3
    law = fit_scaling_laws(run_table(truth, scales), ONLY_LR, loss_law=False).laws["lr"]
    assert {p.scale for p in law.points if p.edge == "above"} == at_edge
    assert all(p.used for p in law.points) and law.n_censored == len(at_edge)
    assert law.method.startswith("censored") and "censored observations" in law.note
    assert law.coefficients["N_exponent"].estimate == pytest.approx(STEP_LAW["N"], abs=0.03)
    assert law.coefficients["D_exponent"].estimate == pytest.approx(STEP_LAW["D"], abs=0.03)


def test_a_weight_decay_optimum_censored_at_zero_enters_the_law_as_its_bound():
    # weight_decay* = 0.1 (D / 4e9)^0.5; the smallest budget's best run is the grid's 0 (below the midpoint 0.06
    # to the next value): log 0 has no value, but "at most 0.06" is a censored observation, never left out.
    tokens = [1e9, 2e9, 4e9, 8e9, 1.6e10, 3.2e10]
    rows = []
    for i, d in enumerate(tokens):
        edge = i == 0
        true = 0.1 * (d / 4e9) ** 0.5
        rows.append({"scale": f"s{i}", "n_params": 1e7 * (1 + i % 2), "tokens": d, "width": 128, "value": 0.0 if edge
                     else true, "at_edge": edge, "edge": "below" if edge else None, "bound": 0.06 if edge else None,
                     "estimate": "measured" if edge else "fitted", "natural_stderr": 0.01,
                     "stderr": math.nan if edge else 0.01 / true})
    law = fit_hparam_law("weight_decay", pd.DataFrame(rows))
    assert law["n_censored"] == 1 and all(p["used"] for p in law["points"]) and "left out" not in law["note"]
    assert law["forms"]["N_D"]["coefficients"]["D_exponent"]["estimate"] == pytest.approx(0.5, abs=0.02)


def test_loss_law_recovers_chinchilla_when_optima_lie_on_the_grid():
    # lr* on the grid at every scale (per-scale grids centred on it) so the best loss is exactly L(N, D).
    truth = Truth(
        optimum={"lr": lambda s: 2.0 / s.width}, curvature={"lr": 0.2},
        grid={"lr": lambda s: [2.0 / s.width * 2 ** (k / 2) for k in range(-3, 4)]},
    )
    loss_law = fit_scaling_laws(run_table(truth, STEP_SCALES), ONLY_LR).loss_law
    assert loss_law["n_points"] == 12
    for name in ("E", "alpha", "beta"):
        assert loss_law[name] == pytest.approx(CHINCHILLA[name], rel=0.01)
    assert loss_law["rmse_log"] < 1e-6


def test_loss_law_that_the_scales_cannot_identify_is_not_offered_as_a_baseline():
    # The loss does not depend on N at all: no model term can be fitted, so no law is offered.
    truth = Truth(
        optimum={"lr": lambda s: 2.0 / s.width}, curvature={"lr": 0.2},
        grid={"lr": lambda s: [2.0 / s.width * 2 ** (k / 2) for k in range(-3, 4)]},
        loss_law={**CHINCHILLA, "A": 0.0},
    )
    loss_law = fit_scaling_laws(run_table(truth, STEP_SCALES), ONLY_LR).loss_law
    assert loss_law["form"] is None and "degenerate fit" in loss_law["reason"]
    assert loss_law["rejected_form"].startswith("L = ")


def test_loss_law_needs_enough_scales():
    truth = Truth(optimum={"lr": lambda s: 2.0 / s.width}, curvature={"lr": 0.2}, grid={"lr": sqrt2_grid(1e-3, 3e-2)})
    laws = fit_scaling_laws(run_table(truth, scale_grid([256, 512], [2e9, 8e9])), ONLY_LR)
    assert laws.loss_law["form"] is None and "needs 6 or more" in laws.loss_law["reason"]
    assert laws.unfitted == {} and "lr" in laws.laws


def test_lr_against_width():
    truth = Truth(
        optimum={"lr": lambda s: 2.0 / s.width, "weight_decay": constant(0.1)},
        curvature={"lr": 0.2, "weight_decay": 8.0},
        grid={"lr": sqrt2_grid(5e-4, 3e-2), "weight_decay": [0.0, 0.1, 0.2]},
    )
    table = run_table(truth, STEP_SCALES)
    sensitivity = analyze_sensitivity(table)
    assert sensitivity.sensitive == []
    lr_width = fit_scaling_laws(table, sensitivity, loss_law=False).lr_width
    assert all(p["lr_x_width"] == pytest.approx(2.0) for p in lr_width["points"])
    assert lr_width["width_exponent"]["estimate"] == pytest.approx(-1.0, abs=1e-6)
    assert lr_width["width_exponent"]["inverse_width_in_ci"]
    # the width rule the sensitivity chose, beside the fit
    assert lr_width["sensitivity_rule"] == "inverse_width" and lr_width["agrees"]
    assert "lies inside the fitted interval" in lr_width["note"]


def test_predict_gives_a_complete_set_with_intervals(step_law):
    sensitivity, laws = step_law
    n, d = 1e8, 1e10
    predicted = predict(laws, n_params=n, tokens=d)
    assert set(predicted.hparams) == {"lr", "weight_decay"}
    expected = STEP_LAW["prefactor"] * n ** STEP_LAW["N"] * d ** STEP_LAW["D"]
    assert predicted.hparams["lr"] == pytest.approx(expected, rel=1e-6)
    low, high = predicted.intervals["lr"]
    assert low <= predicted.hparams["lr"] <= high
    assert predicted.hparams["weight_decay"] == 0.1 and predicted.sources["weight_decay"] == "constant"
    assert predicted.notes == []
    assert predict(laws, n_params=1e10, tokens=d).notes == ["lr: N or D outside the fitted scales, extrapolated"]


def test_noisy_prediction_intervals_widen_away_from_the_data():
    table = run_table(STEP_TRUTH, STEP_SCALES, noise=0.01, seed=3)
    laws = fit_scaling_laws(table, ONLY_LR, loss_law=False)
    inside = predict(laws, n_params=2.5e7, tokens=8e9).intervals["lr"]
    far = predict(laws, n_params=1e11, tokens=1e13).intervals["lr"]
    assert math.log(far[1] / far[0]) > 2 * math.log(inside[1] / inside[0]) > 0


def test_width_rule_constants_need_a_width():
    law = PredictionInputs(
        laws={}, constants={"lr": RecommendedConstant(value=8e-3, rule="inverse_width", reference_width=256)}
    )
    assert predict(law, 1e8, 1e10, width=512).hparams["lr"] == pytest.approx(4e-3)
    with pytest.raises(ParamsError, match="--width"):
        predict(law, 1e8, 1e10)


def test_analyze_and_predict_through_the_cli(tmp_path, capsys):
    table = run_table(STEP_TRUTH, STEP_SCALES, diverged=lambda s, c: c["lr"] > 4 * step_law_lr(s))
    assert table["loss"].isna().any()
    path = tmp_path / "runs.csv"
    table.to_csv(path, index=False)
    out = tmp_path / "analysis"
    assert main(["analyze", str(path), "--out", str(out)]) == 0
    written = capsys.readouterr().out.split()
    assert written == [str(out / "sensitivity.json"), str(out / "scaling_law.json")]

    def strict(text: str):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))

    sensitivity = strict((out / "sensitivity.json").read_text())
    laws = strict((out / "scaling_law.json").read_text())
    assert sensitivity["sensitive"] == ["lr"] and sensitivity["provenance"]["runs_table"] == str(path)
    assert laws["laws"]["lr"]["coefficients"]["N_exponent"]["estimate"] == pytest.approx(STEP_LAW["N"], abs=0.03)

    argv = ["predict", "--n-params", "1e8", "--tokens", "1e10", "--law", str(out / "scaling_law.json")]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["hparams"]) == {"lr", "weight_decay"} and len(printed["intervals"]["lr"]) == 2


def test_analyze_table_returns_the_paths_it_wrote_with_settings_from_params(tmp_path):
    truth = Truth(optimum={"lr": lambda s: 2.0 / s.width}, curvature={"lr": 0.2}, grid={"lr": sqrt2_grid(1e-3, 3e-2)})
    path = tmp_path / "runs.parquet"
    run_table(truth, scale_grid([256, 512], [2e9])).to_parquet(path)
    params = load_params(REPO / "params/presets/tiny.yaml",
                         ["analysis.threshold=0.05", "analysis.threshold_kind=absolute"])
    paths = analyze_table(path, tmp_path / "out", params=params)
    assert [p.name for p in paths] == ["sensitivity.json", "scaling_law.json"] and all(p.is_file() for p in paths)
    sensitivity, laws = (json.loads(p.read_text()) for p in paths)
    assert set(sensitivity["threshold"]["per_scale"].values()) == {0.05}
    assert sensitivity["provenance"]["params_hash"] == params.params_hash()
    assert laws["constants"]["lr"]["rule"] == "inverse_width" and laws["loss_law"]["form"] is None
    assert np.isclose(laws["constants"]["lr"]["value"] * 256, 2.0, rtol=0.2)


def test_predict_cli_errors_exit_2(tmp_path, capsys):
    law = tmp_path / "law.json"
    constants = {"lr": {"value": 8e-3, "rule": "inverse_width", "reference_width": 256}}
    law.write_text(json.dumps({"laws": {}, "constants": constants}))
    assert main(["predict", "--n-params", "1e8", "--tokens", "1e10", "--law", str(law)]) == 2
    assert "pass --width" in capsys.readouterr().err
    law.write_text("{not json")
    assert main(["predict", "--n-params", "1e8", "--tokens", "1e10", "--law", str(law)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
