"""Working from anywhere in the project (JupyterLab starts kernels in notebooks/), plain settings, and the
results API: the project root, `study.workers`, one-scale studies, the sweep notebook's phase, tidy frames."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

import optsweep.testing.trainers as synth
from optsweep import results
from optsweep.execution.workers import worker_environments
from optsweep.params.paths import ROOT_VARIABLE, find_root, project
from optsweep.params.settings import ParamsError, load_params, validate_params
from optsweep.results.documents import (
    HparamLaw,
    HparamVerdict,
    LawCoefficient,
    ScalingLaws,
    SensitivityResult,
    SweepResult,
)
from optsweep.search import run_sweep

REPO = Path(__file__).resolve().parents[1]


def _project(folder: Path, **sections) -> Path:
    """A study project on the synthetic `bowl` trainer: params/study.yaml under `folder`, runs in folder/runs."""
    params_file = synth.write_study(folder, "bowl", **sections)
    (folder / "params").mkdir()
    params_file.rename(folder / "params/study.yaml")
    return folder


def _optsweep(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([synth.OPTSWEEP, *args], cwd=cwd, env=synth.cli_env(), capture_output=True, text=True,
                          timeout=300)


def _error_line(done: subprocess.CompletedProcess) -> str:
    """The CLI's one-line error (a notebook's kernel may log warnings to stderr before it)."""
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("optsweep: error: "), done.stderr[-3000:]
    return last


# --- the project root -------------------------------------------------------------------------------------


def test_the_root_is_found_from_any_folder_below_it(tmp_path, monkeypatch):
    root = _project(tmp_path / "study")
    (root / "notebooks" / "deeper").mkdir(parents=True)
    monkeypatch.delenv(ROOT_VARIABLE, raising=False)
    monkeypatch.chdir(root / "notebooks" / "deeper")
    assert find_root() == root.resolve()
    assert project().sweep("a", "law") == root.resolve() / "results/law_sweeps/a.json"


def test_the_environment_names_the_root(tmp_path, monkeypatch):
    root = _project(tmp_path / "study")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(ROOT_VARIABLE, str(root))
    assert project().params == root.resolve() / "params/study.yaml"


def test_outside_a_project_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.delenv(ROOT_VARIABLE, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParamsError, match=f"no project root at or above {tmp_path}.*{ROOT_VARIABLE}") as error:
        find_root()
    assert "\n" not in str(error.value)


# --- study.workers ------------------------------------------------------------------------------------------


def _study(tmp_path: Path, **study):
    """The study settings of a params file with these `study` keys; `workers` left out unless given."""
    raw = yaml.safe_load(synth.write_study(tmp_path, "bowl").read_text())
    raw["study"].pop("workers")
    return validate_params({**raw, "study": {**raw["study"], **study}}).study


def test_workers_auto_means_the_same_written_or_defaulted(tmp_path):
    defaulted = _study(tmp_path, workers_per_gpu=2, train={})
    written = _study(tmp_path, workers="auto", workers_per_gpu=2, train={})
    for gpus in (["0", "1"], []):
        assert worker_environments(defaulted, gpus=gpus) == worker_environments(written, gpus=gpus)
    on_gpus = worker_environments(written, gpus=["0", "1"])
    assert [env["CUDA_VISIBLE_DEVICES"] for env in on_gpus] == ["0", "1", "0", "1"]  # 2 GPUs x 2 per GPU
    cores = len(os.sched_getaffinity(0))
    assert len(worker_environments(_study(tmp_path, train={"device": "cpu"}))) == cores
    two_threads = _study(tmp_path, train={"device": "cpu", "threads_per_worker": 2})
    assert len(worker_environments(two_threads)) == max(1, cores // 2)


def test_a_written_count_is_that_many_workers_on_any_box(tmp_path):
    three = _study(tmp_path, workers=3, workers_per_gpu=4, train={})
    assert [env["CUDA_VISIBLE_DEVICES"] for env in worker_environments(three, gpus=["0", "1"])] == ["0", "1", "0"]
    assert len(worker_environments(three, gpus=[])) == 3
    assert len(worker_environments(_study(tmp_path, workers=1, train={}), gpus=["0", "1"] * 4)) == 1


@pytest.mark.parametrize("value", [0, "many", 1.5])
def test_bad_workers_fail_in_one_line(tmp_path, value):
    root = _project(tmp_path / "study")
    done = _optsweep("plan", "--set", f"study.workers={value}", cwd=root)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "study.workers: must be 'auto' or a count of at least 1" in done.stderr


def test_presets_leave_workers_to_auto_unless_they_mean_a_count():
    for preset in ("tiny", "paper"):
        study = yaml.safe_load((REPO / f"params/presets/{preset}.yaml").read_text())["study"]
        assert "workers" not in study and "workers_per_gpu" not in study


# --- one scale, and the sweep notebook's phase --------------------------------------------------------------


def test_a_one_scale_study_sweeps_and_the_sensitivity_stage_says_it_needs_two(tmp_path):
    root = _project(tmp_path / "study", scales={"mine": {"width": 32, "depth": 1, "heads": 2, "seq_len": 32,
                                                         "batch_size": 8, "tokens": 8192}})
    swept = _optsweep("sweep", "--scale", "mine", cwd=root)
    assert swept.returncode == 0, swept.stderr
    assert json.loads((root / "results/sweeps/mine.json").read_text())["best"]["lr"] == 1e-2  # the bowl's optimum
    analysed = _optsweep("notebook", str(REPO / "notebooks/sensitivity.py"), "--html", "reports/s.html", cwd=root)
    assert analysed.returncode == 2 and not (root / "results/sensitivity.json").exists()
    assert _error_line(analysed).endswith(
        "sensitivity.py: scales: the sensitivity analysis compares phase-1 scales and needs at least 2, got 1"
    )


def test_the_law_phase_without_a_sensitivity_file_is_an_error_not_a_phase1_search(tmp_path):
    root = _project(tmp_path / "study")
    done = _optsweep("notebook", str(REPO / "notebooks/sweep.py"), "--html", "reports/l.html", "-p", "phase=law",
                     "-p", "scale=a", cwd=root)
    assert done.returncode == 2
    assert "results/sensitivity.json: sensitivity file not found" in _error_line(done)
    assert not (root / "results/law_sweeps").exists() and not (root / "runs").exists()


def test_the_sweep_notebook_by_default_sweeps_the_first_scale_from_the_notebooks_folder(tmp_path):
    root = _project(tmp_path / "study")
    (root / "notebooks").mkdir()
    done = _optsweep("notebook", str(REPO / "notebooks/sweep.py"), "--html", str(root / "reports/x.html"),
                     cwd=root / "notebooks")
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (root / "results/sweeps").iterdir()) == ["a.json"]
    assert (root / "runs").is_dir() and not (root / "notebooks/runs").exists()
    assert (root / "build/notebooks/x.ipynb").is_file()


# --- tidy frames ------------------------------------------------------------------------------------------


def test_results_frames_hold_every_run_and_every_step(tmp_path):
    root = _project(tmp_path / "study")
    paths = project(root)
    params = load_params(paths.params)
    documents = [run_sweep(params, scale, paths.sweep(scale), progress=False) for scale in ("a", "b")]

    stored = results.runs(paths)
    assert len(stored) == len(list((root / "runs").glob("*.json")))
    assert set(stored["status"]) <= {"ok", "diverged", "failed"} and {"lr", "loss", "n_params"} <= set(stored)

    evaluated = results.sweeps(paths)
    assert len(evaluated) == sum(len(d["runs"]) for d in documents)
    best = evaluated[evaluated["best"]]
    assert sorted(best["scale"]) == ["a", "b"] and (best["delta_loss"] == 0).all()
    assert (evaluated.loc[evaluated["status"] == "ok", "delta_loss"] >= 0).all()

    steps = results.trajectories(paths)
    assert len(steps) == sum(len(d["trajectory"]) for d in documents)
    last = steps.groupby("scale")["loss"].last()
    assert last.to_dict() == {d["scale"]["name"]: d["best_loss"] for d in documents}


def test_a_missing_results_file_is_a_one_line_error(tmp_path):
    paths = project(_project(tmp_path / "study"))
    with pytest.raises(ParamsError, match="sensitivity.json: results file not found"):
        results.sensitivity(paths)


def test_metrics_condense_best_losses_the_sensitive_set_and_the_exponents():
    # only the fields the metrics read (model_construct: the documents' other fields do not matter here)
    sweep = SweepResult.model_construct(scale={"name": "a"}, best_loss=3.5)
    sensitivity = SensitivityResult.model_construct(hyperparameters={
        "lr": HparamVerdict.model_construct(sensitive=True), "eps": HparamVerdict.model_construct(sensitive=False)})
    coefficients = {name: LawCoefficient.model_construct(estimate=value)
                    for name, value in (("log_prefactor", 1.0), ("N_exponent", -0.5), ("D_exponent", 0.25))}
    laws = ScalingLaws.model_construct(laws={"lr": HparamLaw.model_construct(coefficients=coefficients)})
    metrics = results.study_metrics([sweep], sensitivity, laws)
    assert metrics.model_dump() == {"best_loss": {"a": 3.5}, "sensitive": {"lr": True, "eps": False},
                                    "law_exponents": {"lr": {"N": -0.5, "D": 0.25}}}
