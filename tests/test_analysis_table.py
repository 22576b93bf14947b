"""Run tables: reading CSV/Parquet, our sweep results as a table, and bad tables failing with one line."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from optsweep.analysis import analyze_sensitivity, load_runs_table, runs_table_from_sweeps
from optsweep.cli import main
from optsweep.params.settings import ParamsError
from optsweep.results.documents import SweepRuns, as_json
from optsweep.testing.tables import Truth, constant, run_table, scale_grid


def small_table() -> pd.DataFrame:
    truth = Truth(
        optimum={"lr": lambda s: 2.0 / s.width, "weight_decay": constant(0.1)},
        curvature={"lr": 0.2, "weight_decay": 8.0},
        grid={"lr": [1e-3 * 2**k for k in range(-3, 6)], "weight_decay": [0.0, 0.1, 0.2]},
    )
    return run_table(truth, scale_grid([256, 512], [2e9, 8e9]))


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "break_table, column",
    [
        (lambda t: t.drop(columns="loss"), "'loss'"),
        (lambda t: t.drop(columns="width"), "'width'"),
        (lambda t: t[t["scale"] == t["scale"].iloc[0]], "'scale'"),
        (lambda t: t.drop(columns="weight_decay").assign(lr=0.01), "'lr'"),
        (lambda t: t.assign(n_params=t["n_params"].astype(object).where(t.index != 3, "big")), "'n_params'"),
        (lambda t: t.assign(loss=t["loss"].astype(object).where(t.index != 5, "diverged?")), "'loss'"),
        (lambda t: t.assign(beta2=1.5), "'beta2'"),
        (lambda t: t.assign(status=np.where(t["scale"] == t["scale"].iloc[0], "diverged", t["status"])), "'loss'"),
        (lambda t: t.assign(n_params=t["n_params"] + t.index), "'n_params'"),
        (lambda t: t.drop(columns=["lr", "weight_decay"]), "hyperparameter column"),
    ],
    ids=["no-loss", "no-width", "one-scale", "single-valued-hparam", "text-in-n_params", "text-in-loss",
         "beta-out-of-range", "scale-all-diverged", "n_params-varies-within-scale", "no-hparam-column"],
)
def test_bad_tables_fail_through_the_cli_with_one_line_naming_the_column(tmp_path, capsys, break_table, column):
    path = tmp_path / "runs.csv"
    break_table(small_table()).to_csv(path, index=False)
    code, out, err = run_cli(capsys, "analyze", str(path), "--out", str(tmp_path / "out"))
    assert code == 2
    assert err.startswith("optsweep: error: ") and err.count("\n") == 1
    assert str(path) in err and column in err
    assert not (tmp_path / "out").exists()


def test_missing_file_and_unknown_format_fail_with_exit_2(tmp_path, capsys):
    code, _, err = run_cli(capsys, "analyze", str(tmp_path / "nope.csv"), "--out", str(tmp_path))
    assert code == 2 and "nope.csv: runs table not found" in err
    (tmp_path / "runs.xlsx").write_text("x")
    code, _, err = run_cli(capsys, "analyze", str(tmp_path / "runs.xlsx"), "--out", str(tmp_path))
    assert code == 2 and ".csv or .parquet" in err


def test_a_single_valued_hparam_beside_a_swept_one_is_reported_fixed_not_judged(tmp_path):
    table = small_table().assign(eps=1e-15, unrelated_column="ignored")
    path = tmp_path / "runs.parquet"
    table.to_parquet(path)
    sensitivity = analyze_sensitivity(load_runs_table(path))
    assert sensitivity.fixed == {"eps": 1e-15}
    assert "eps" not in sensitivity.hyperparameters
    assert as_json(sensitivity.recommended["eps"]) == {"value": 1e-15, "rule": "none", "reference_width": None,
                                                 "swept": False}


def test_diverged_and_skipped_rows_and_extra_columns(tmp_path):
    table = small_table()
    table["status"] = "ok"
    table.loc[0, "status"] = "skipped"
    table.loc[1, ["status", "loss"]] = ["diverged", 7.5]
    table.loc[2, "loss"] = math.inf
    table.loc[3, ["status", "loss"]] = ["missing", np.nan]
    table.loc[4, ["status", "loss"]] = ["failed", 3.5]  # a fault is missing data, never a divergence
    path = tmp_path / "runs.csv"
    table.to_csv(path, index=False)
    loaded = load_runs_table(path)
    assert len(loaded) == len(table) - 3
    assert loaded["loss"].isna().sum() == 2


def test_an_empty_loss_without_a_status_names_its_rows(tmp_path):
    table = small_table()
    table.loc[[3, 7], "loss"] = np.nan
    path = tmp_path / "runs.csv"
    table.to_csv(path, index=False)
    with pytest.raises(ParamsError, match=r"column 'loss': data rows 4, 8 empty without a status; .*'missing'"):
        load_runs_table(path)


def test_text_in_a_hparam_column_names_row_and_value():
    table = small_table()
    table["lr"] = table["lr"].astype(object)
    table.loc[4, "lr"] = "3e-3x"
    with pytest.raises(ParamsError, match=r"runs table: column 'lr': data row 5 has '3e-3x': not a number"):
        analyze_sensitivity(table)


def sweep_result(name: str, width: int, tokens: int, phase: str = "phase1") -> SweepRuns:
    def run(key, lr, wd, loss, status="ok", seed=0):
        hparams = {"lr": lr, "min_lr_ratio": 0.0, "weight_decay": wd, "eps": 1e-15}
        return {"key": key, "hparams": hparams, "seed": seed, "loss": loss, "status": status}

    runs = [
        run(f"{name}a", 0.01, 0.1, 3.10),
        run(f"{name}b", 0.02, 0.1, 3.05),
        run(f"{name}c", 0.04, 0.1, None, "diverged"),
        run(f"{name}d", 0.02, 0.0, 3.08),
        run(f"{name}e", 0.02, 0.2, 3.07),
        run(f"{name}f", 0.08, 0.1, None, "skipped"),
        run(f"{name}b", 0.02, 0.1, 3.05),  # listed twice (e.g. shared by two passes): counted once
        run(f"{name}g", 0.02, 0.1, 3.06, seed=1),
        run(f"{name}h", 0.01, 0.0, None, "failed"),  # a fault: missing data, dropped (never a divergence)
    ]
    return SweepRuns.model_validate({
        "scale": {"name": name, "width": width, "depth": 2, "n_params": 12 * 2 * width**2, "tokens": tokens,
                  "steps": tokens // 1024},
        "phase": phase, "free": ["lr", "weight_decay"], "fixed": {"min_lr_ratio": 0.0, "eps": 1e-15},
        "best": runs[1]["hparams"], "best_loss": 3.05, "near_best": [], "passes": 2, "converged": True,
        "runs": runs, "slices": {}, "noise": None, "provenance": {},
    })


def test_runs_table_from_sweeps():
    sweeps = [sweep_result("n1", 64, 65536), sweep_result("n2", 128, 65536), sweep_result("n3", 96, 131072, "law")]
    table = runs_table_from_sweeps(sweeps)
    assert len(table) == 3 * 6
    assert set(table["phase"]) == {"phase1", "law"}
    assert table["loss"].isna().sum() == 3
    assert (table.loc[table["scale"] == "n3", "steps"] == 128).all()
    assert {"lr", "min_lr_ratio", "weight_decay", "eps", "seed"} <= set(table.columns)
    sensitivity = analyze_sensitivity(table)
    assert set(sensitivity.scales) == {"n1", "n2"}  # phase-1 rows decide sensitivity
    assert sensitivity.fixed == {"min_lr_ratio": 0.0, "eps": 1e-15}
    # the seed pair (3.05, 3.06) of one config per phase-1 scale is the only noise measurement
    assert sensitivity.noise.seeds["configs"] == 2
    assert sensitivity.noise.std == pytest.approx(np.std([3.05, 3.06], ddof=1))


def test_runs_table_from_sweeps_without_runs_is_an_error():
    empty = sweep_result("n1", 64, 65536).model_copy(update={"runs": []})
    with pytest.raises(ParamsError, match="no trained runs"):
        runs_table_from_sweeps([empty])
