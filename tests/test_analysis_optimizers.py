"""The analysis of other optimizers' run tables: their hyperparameter names get their own natural axes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from optsweep.analysis import analyze_sensitivity, fit_scaling_laws, runs_table_from_sweeps
from optsweep.analysis.speedup import SpeedupResult
from optsweep.cli import main
from optsweep.results.documents import SensitivityResult, SweepRuns
from optsweep.testing.tables import CHINCHILLA, Truth, constant, run_table, scale_grid, sqrt2_grid

SCALES = scale_grid([256, 512], [2e9, 8e9])


def momentum_by_data(scale) -> float:
    return 1 - 0.08 * (scale.tokens / 2e9) ** -0.5


# Muon's names: its lr follows 1/width, its momentum moves with data (on the log(1 - x) axis), the AdamW
# part's lr ratio has a fixed optimum the loss cares about (on the linear axis).
MUON = Truth(
    optimum={"lr": lambda s: 8.0 / s.width, "momentum": momentum_by_data, "muon_to_adam_lr": constant(0.2)},
    curvature={"lr": 0.2, "momentum": 0.2, "muon_to_adam_lr": 5.0},
    grid={"lr": sqrt2_grid(4e-3, 1e-1), "momentum": [0.8, 0.9, 0.95, 0.98, 0.99],
          "muon_to_adam_lr": [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5]},
)


@pytest.fixture(scope="module")
def muon() -> SensitivityResult:
    return analyze_sensitivity(run_table(MUON, SCALES))


def test_muon_names_are_judged_on_their_natural_axes(muon):
    # AdamW's order first, then the others
    assert list(muon.hyperparameters) == ["lr", "momentum", "muon_to_adam_lr"]
    assert muon.sensitive == ["momentum"]
    momentum = muon.hyperparameters["momentum"]
    assert momentum.shift_cause == "data"
    # exact only when the quadratic is fitted on log(1 - momentum), the axis the truth is a parabola on
    for scale in SCALES:
        assert momentum.optimum[scale.name].refined == pytest.approx(momentum_by_data(scale), abs=1e-9)
    ratio = muon.hyperparameters["muon_to_adam_lr"]
    assert ratio.loss_sensitive and not ratio.sensitive
    for optimum in ratio.optimum.values():
        assert optimum.refined == pytest.approx(0.2, rel=1e-6)
    assert muon.recommended["muon_to_adam_lr"].value == pytest.approx(0.2, rel=0.2)


def test_a_momentum_law_is_fitted_on_one_minus_momentum(muon):
    laws = fit_scaling_laws(run_table(MUON, SCALES), muon, loss_law=False)
    law = laws.laws["momentum"]
    assert law.transform == "log(1 - h)"
    assert law.coefficients["D_exponent"].estimate == pytest.approx(-0.5, abs=1e-6)
    assert set(laws.constants) == {"lr", "muon_to_adam_lr"}


def test_hypotheses_about_names_muon_lacks_are_inconclusive(muon):
    answers = {a.hypothesis: a for a in muon.hypotheses}
    assert answers["epsilon is insensitive to scale"].verdict == "inconclusive"
    assert answers["epsilon is insensitive to scale"].evidence["why"] == "eps was not swept"
    assert "warmup was not swept" in answers[next(h for h in answers if h.startswith("warmup"))].evidence["why"]



def test_a_user_optimizers_declared_axes_reach_the_analysis_through_its_sweep_results():
    """A name no built-in optimizer has, declared log(1 - x) by the sweep results: analysed on that axis."""
    truth = Truth(optimum={"lr": lambda s: 8.0 / s.width, "momentum": momentum_by_data},
                  curvature=MUON.curvature, grid={"lr": MUON.grid["lr"], "momentum": MUON.grid["momentum"]})
    table = run_table(truth, SCALES).rename(columns={"momentum": "user_momentum"})
    sweeps = [
        SweepRuns.model_validate({
         "scale": {"name": scale, "n_params": rows["n_params"].iloc[0], "tokens": rows["tokens"].iloc[0],
                   "width": int(rows["width"].iloc[0])},
         "phase": "phase1", "axes": {"lr": "log", "user_momentum": "log1m"},
         "runs": [{"key": f"{scale}-{i}", "hparams": {"lr": row.lr, "user_momentum": row.user_momentum},
                   "seed": 0, "loss": row.loss, "status": "ok"} for i, row in enumerate(rows.itertuples())]})
        for scale, rows in table.groupby("scale", sort=False)
    ]
    user = analyze_sensitivity(runs_table_from_sweeps(sweeps)).hyperparameters["user_momentum"]
    for scale in SCALES:
        assert user.optimum[scale.name].refined == pytest.approx(momentum_by_data(scale), abs=1e-9)

# --- `optsweep analyze` on a table of several optimizers -------------------------------------------------

# Two widths x three data scales (a fittable L(D) per model size). Every optimum lies on its grid, so each
# scale's tuned loss is the loss law's; Muon's law reaches AdamW's loss with 1/1.3 of the data.
THREE_BUDGETS = scale_grid([256, 512], [2e9, 4e9, 8e9])
ADAMW = Truth(
    optimum={"lr": lambda s: 2.0 / s.width, "weight_decay": constant(0.1)},
    curvature={"lr": 0.2, "weight_decay": 8.0},
    grid={"lr": sqrt2_grid(2e-3, 2e-2, anchor=2.0 / 256), "weight_decay": [0.0, 0.05, 0.1, 0.2]},
)
MUON_1_3X = Truth(
    optimum={"lr": constant(0.02), "momentum": constant(0.95)},
    curvature={"lr": 0.2, "momentum": 0.05},
    grid={"lr": [0.005, 0.01, 0.02, 0.04], "momentum": [0.8, 0.9, 0.95, 0.98]},
    loss_law={**CHINCHILLA, "B": CHINCHILLA["B"] * 1.3 ** -CHINCHILLA["beta"]},
)


def without_provenance(path: Path) -> dict:
    return {key: value for key, value in json.loads(path.read_text()).items() if key != "provenance"}


def test_analyze_cli_with_an_optimizer_column(tmp_path, capsys):
    adamw = run_table(ADAMW, THREE_BUDGETS)
    both = pd.concat([adamw.assign(optimizer="adamw"), run_table(MUON_1_3X, THREE_BUDGETS).assign(optimizer="muon")])
    both.to_csv(tmp_path / "runs.csv", index=False)
    adamw.to_csv(tmp_path / "adamw.csv", index=False)
    out = tmp_path / "analysis"

    assert main(["analyze", str(tmp_path / "runs.csv"), "--out", str(out)]) == 0
    assert capsys.readouterr().out.split() == [
        str(out / "sensitivity.json"), str(out / "scaling_law.json"),
        str(out / "optimizers" / "muon" / "sensitivity.json"), str(out / "optimizers" / "muon" / "scaling_law.json"),
        str(out / "speedup.json"),
    ]
    # the reference's analysis is the one of its rows alone, as without the column
    assert main(["analyze", str(tmp_path / "adamw.csv"), "--out", str(tmp_path / "alone")]) == 0
    for name in ("sensitivity.json", "scaling_law.json"):
        assert without_provenance(out / name) == without_provenance(tmp_path / "alone" / name)
    muon = json.loads((out / "optimizers" / "muon" / "sensitivity.json").read_text())
    assert list(muon["hyperparameters"]) == ["lr", "momentum"] and muon["provenance"]["optimizer"] == "muon"

    speedup = SpeedupResult.read(out / "speedup.json")
    assert speedup.provenance.runs_table == str(tmp_path / "runs.csv")
    assert [c.n_params for c in speedup.curves] == [s.n_params for s in THREE_BUDGETS[::3]]
    assert len(speedup.speedups) == len(THREE_BUDGETS)
    for row in speedup.speedups:
        assert row.optimizer == "muon" and row.speedup == pytest.approx(1.3, rel=1e-3)
        assert row.interval[0] < 1.3 < row.interval[1]


@pytest.mark.parametrize(("optimizer", "message"), [
    (["adamw", "muon/v2"], "column 'optimizer': data row "),
    (["lion", "muon"], "column 'optimizer': no run of the reference 'adamw'; found lion, muon"),
])
def test_analyze_cli_bad_optimizer_column_fails_in_one_line(tmp_path, capsys, optimizer, message):
    table = run_table(ADAMW, THREE_BUDGETS)
    table["optimizer"] = np.where(table.index % 2, *optimizer)
    table.to_csv(tmp_path / "runs.csv", index=False)
    assert main(["analyze", str(tmp_path / "runs.csv"), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert not (tmp_path / "out").exists()
