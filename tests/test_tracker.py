"""`study.tracker: wandb`: every trained run logged to Weights & Biases (offline here), runs stored first."""

from __future__ import annotations

import json

import optsweep.testing.trainers as synth
from optsweep.params.settings import load_params
from optsweep.search import run_sweep


def test_every_trained_run_is_logged_with_its_hyperparameters_and_curves(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    params = load_params(synth.write_study(tmp_path, "reporter", study_tracker="wandb", grid={"lr": [1e-3, 1e-2]},
                                           search={"passes": 1, "extend_edges": 0, "noise_seeds": 0}))
    result = run_sweep(params, "a", tmp_path / "a.json", progress=False)
    logs = {path.parent.name: path.read_bytes() for path in (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")}
    assert len(logs) == result["compute"]["runs_trained"] == 3
    for run in result["runs"]:  # each W&B run is named by the run-store key and holds the config and curves
        log = next(data for data in logs.values() if run["key"].encode() in data)
        assert json.dumps(run["hparams"]["lr"]).encode() in log
        assert b"train/loss" in log and b"eval/loss" in log
    again = run_sweep(params, "a", tmp_path / "a.json", progress=False)  # all from the run store: nothing logged
    assert again["compute"]["runs_trained"] == 0
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 3
