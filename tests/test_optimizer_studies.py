"""Other optimizers tuned the same way: params, the run key, a user's optimizer through a real sweep, and the
AdamW optimum carried over (`optimizers:` in params, `optsweep sweep --optimizer`, `--transfer-from`)."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import small_study, write_params
from optsweep.cli import main
from optsweep.optimizers import BUILT_IN
from optsweep.params.settings import ParamsError, load_params
from optsweep.runs.store import RunStore, run_key
from optsweep.runs.trainer import make_run_spec
from optsweep.testing.trainers import OPTSWEEP, cli_env

USER_SGD = {"optimizer": "user_optimizer:sgd", "baseline": {"lr": 0.3, "warmup": 4},
            "grid": {"lr": [0.1, 0.3], "momentum": [0.8, 0.9]}}
LION = {"baseline": {"lr": 1e-3, "warmup": 4}, "grid": {"lr": [3e-4, 1e-3], "beta2": [0.95, 0.99]}}


def study_with(folder: Path, data: Path | None = None, **optimizers: dict[str, Any]) -> dict[str, Any]:
    raw = small_study(data or folder / "data")
    raw["study"]["store"] = str(folder / "runs")
    raw["optimizers"] = copy.deepcopy(optimizers)
    return raw


def test_another_optimizer_shares_the_study_but_not_its_hyperparameters(tmp_path):
    params = load_params(write_params(tmp_path / "p.yaml", study_with(tmp_path, lion=LION)))
    lion = params.for_optimizer("lion")
    assert lion.study.optimizer == "lion" and lion.scales == params.scales and lion.study.store == params.study.store
    baseline, grid = lion.scale_space("a")
    assert baseline == {"lr": 1e-3, "beta1": 0.9, "beta2": 0.99, "weight_decay": 0.1,  # the rest: Lion's defaults
                        "min_lr_ratio": 0.0, "warmup": 4, "clip": 1.0}
    assert lion.coordinate_order() == ["lr", "beta2"]
    shared = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.99, "weight_decay": 0.1, "min_lr_ratio": 0.0, "warmup": 4,
              "clip": 1.0}
    adamw_spec = make_run_spec(params, "a", {**params.scale_space("a")[0], **shared}, None)
    lion_spec = make_run_spec(lion, "a", shared, None)
    assert lion_spec["optimizer"]["name"] == "lion" and adamw_spec["optimizer"]["name"] == "adamw"
    trainer, code = params.study.trainer, "code"
    assert run_key(lion_spec, trainer, code) != run_key(adamw_spec, trainer, code)  # same names, other optimizer


BAD_OPTIMIZERS = {
    "unknown key": ({"lion": {**LION, "grid": {"eps": [1e-8]}}},
                    "optimizers.lion: grid.eps: optimizer 'lion' has no hyperparameter 'eps'; it has: lr, beta1"),
    "outside the domain": ({"lion": {**LION, "grid": {"beta1": [0.9, 1.2]}}},
                           "optimizers.lion: grid.beta1: optimizer 'lion', beta1: 1.2 is outside [0, 1)"),
    "bad baseline": ({"muon": {"baseline": {"momentum": 1.0}, "grid": {"lr": [0.02]}}},
                     "optimizers.muon: baseline: optimizer 'muon', momentum: 1.0 is outside [0, 1)"),
    "unknown optimizer": ({"adam2": {"baseline": {}, "grid": {"lr": [1e-3]}}},
                          f"unknown optimizer 'adam2'; built in: {', '.join(BUILT_IN)}, or 'module:function'"),
    "not declared": ({"sgd": {**USER_SGD, "optimizer": "user_optimizer:not_declared"}},
                     "'user_optimizer:not_declared' is not an optimizer declared with"),
    "bad name": ({"my muon": {"baseline": {}, "grid": {"lr": [0.02]}}},
                 "optimizers: name 'my muon' must be letters, digits"),
}


@pytest.mark.parametrize("optimizers, message", BAD_OPTIMIZERS.values(), ids=BAD_OPTIMIZERS.keys())
def test_bad_optimizer_params_fail_in_one_line_before_any_run(tmp_path, capsys, optimizers, message):
    params = write_params(tmp_path / "p.yaml", study_with(tmp_path, **optimizers))
    assert main(["sweep", "--params", str(params), "--phase", "phase1", "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("optsweep: error: ") and error.count("\n") == 1 and message in error, error
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


def test_sweeping_an_optimizer_the_params_do_not_name_fails_in_one_line(tmp_path, capsys):
    params = write_params(tmp_path / "p.yaml", study_with(tmp_path, lion=LION))
    assert main(["sweep", "--params", str(params), "--phase", "phase1", "--optimizer", "muon"]) == 2
    assert capsys.readouterr().err.endswith("optimizers: no optimizer 'muon'; params name: lion\n")


def sweep(params: Path, out: Path, *arguments: str) -> dict[str, Any]:
    subprocess.run([OPTSWEEP, "sweep", "--params", str(params), "--scale", "a", "--out", str(out), *arguments],
                   check=True, capture_output=True, text=True, timeout=600, env=cli_env())
    return json.loads(out.read_text())


def test_a_users_optimizer_runs_through_a_sweep_and_gets_adamws_optimum_carried_over(prepared_params,
                                                                                     prepared_data, tmp_path):
    data = Path(prepared_params.study.data.dir)  # the session's prepared data (the sweeps only read it)
    params = write_params(tmp_path / "p.yaml", study_with(tmp_path, data, sgd=USER_SGD))
    adamw = sweep(params, tmp_path / "adamw" / "a.json")
    sgd = sweep(params, tmp_path / "sgd" / "a.json", "--optimizer", "sgd", "--transfer-from", str(tmp_path / "adamw"))

    assert adamw["optimizer"] == "adamw" and sgd["optimizer"] == "user_optimizer:sgd"
    assert sgd["axes"] == {"lr": "log", "momentum": "log1m", "weight_decay": "linear", "min_lr_ratio": "linear",
                           "warmup": "log1p", "clip": "linear"}
    assert set(sgd["best"]) == {"lr", "momentum", "weight_decay", "min_lr_ratio", "warmup", "clip"}
    assert sgd["best_loss"] < 6.2  # ln(512) = 6.24: it learned
    stored = {record.key: record for record in RunStore(tmp_path / "runs")}
    for run in sgd["runs"]:
        assert stored[run["key"]].spec["optimizer"]["name"] == "user_optimizer:sgd"
        assert stored[run["key"]].result["provenance"]["optimizer"]["name"] == "user_optimizer:sgd"

    transfer = sgd["transfer"]
    assert transfer["source"] == "adamw" and transfer["tuned_loss"] == sgd["best_loss"]
    assert transfer["carried"] == ["lr", "weight_decay", "min_lr_ratio", "warmup", "clip"]
    assert transfer["hparams"] == {**sgd["best"], **{h: adamw["best"][h] for h in transfer["carried"]}}
    carried_run = next(run for run in sgd["runs"] if run["hparams"] == transfer["hparams"])
    assert carried_run["loss"] == transfer["loss"] and transfer["status"] in ("ok", "diverged")


def test_laws_may_be_asked_for_any_compared_optimizers_hyperparameter(tmp_path):
    raw = study_with(tmp_path, lion=LION, muon={"baseline": {}, "grid": {"lr": [0.02]}})
    raw["analysis"] = {"laws_for": ["momentum"]}
    assert load_params(write_params(tmp_path / "p.yaml", raw)).analysis.laws_for == ["momentum"]
    raw["analysis"] = {"laws_for": ["moment"]}
    with pytest.raises(ParamsError, match=r"unknown hyperparameter 'moment'; allowed: batch_size, .*muon_to_adam_lr"):
        load_params(write_params(tmp_path / "p.yaml", raw))
