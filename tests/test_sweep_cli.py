"""`optsweep sweep` end to end: bad params fail fast, a SIGKILLed sweep resumes exactly, Ctrl-C stops cleanly."""

from __future__ import annotations

import collections
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

import optsweep.testing.trainers as synth
from optsweep.cli import main
from optsweep.params.settings import load_params
from optsweep.runs.store import RunStore
from optsweep.search import run_sweep

BASELINE = {"lr": 3e-3, "min_lr_ratio": 0.0, "warmup": 4, "beta1": 0.9, "beta2": 0.95,
            "weight_decay": 0.1, "eps": 1e-8, "clip": 1.0}
COMPARED = ("scale", "free", "grid", "baseline", "best", "best_loss", "near_best", "passes", "converged",
            "trajectory", "slices")


@pytest.mark.parametrize(
    ("sections", "arguments", "message"),
    [
        ({"grid": {"lr": []}}, [], "grid: lr: empty grid; give at least one value"),
        ({"grid": {}}, [], "grid: empty; give a list of values for at least one of lr, "),
        ({"baseline": {**BASELINE, "momentum": 0.9}}, [],
         "baseline: optimizer 'adamw' has no hyperparameter 'momentum'; it has: lr, "),
        ({"search": {"free": ["eps"]}}, [], "search.free: 'eps' has no grid; grid has: lr, weight_decay, beta2"),
        ({"search": {"tolerance": -1e-3}}, [], "search.tolerance: Input should be greater than or equal to 0"),
        ({"search": {"passes": 0}}, [], "search.passes: Input should be greater than or equal to 1"),
        ({}, ["--set", "momentum=0.9"], "baseline: optimizer 'adamw' has no hyperparameter 'momentum'"),
        ({}, ["--scale", "zz"], "unknown scale 'zz'; allowed: a, b"),
        ({"study_trainer": "optsweep.testing.trainers:nope"}, [],
         "study.trainer: module 'optsweep.testing.trainers' has no callable"),
        ({}, ["--sensitivity", "missing.json"], "missing.json: sensitivity file not found"),
    ],
)
def test_bad_params_fail_with_one_line_before_any_run(tmp_path, capsys, sections, arguments, message):
    params = synth.write_study(tmp_path, "bowl", **sections)
    out = tmp_path / "out.json"
    code = main(["sweep", "--params", str(params), "--scale", "a", "--out", str(out), *arguments])
    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith("optsweep: error: ") and error.count("\n") == 1 and message in error
    assert not (tmp_path / "runs").exists() and not out.exists()


def wait_until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the sweep"
        time.sleep(0.05)


def start_sweep(params: Path, out: Path, **env: str) -> subprocess.Popen:
    """`optsweep sweep` in its own process group, so that a signal reaches it and its workers alike."""
    return subprocess.Popen(
        [synth.OPTSWEEP, "sweep", "--params", str(params), "--scale", "a", "--out", str(out)],
        env=synth.cli_env(**env), start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def live_processes_in_group(group: int) -> list[int]:
    """Processes of a process group that are still running (zombies left to a non-reaping init are dead)."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()  # after "pid (command)": state ppid pgrp ...
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            live.append(int(stat.parent.name))
    return live


def stored(root: Path) -> int:
    return len(list(root.glob("*.json"))) if root.exists() else 0


def test_a_sigkilled_sweep_resumes_to_the_uninterrupted_result_training_each_config_once(tmp_path, monkeypatch):
    # The uninterrupted reference: inline worker, its own store.
    monkeypatch.setenv("SYNTH_CALLS", str(tmp_path / "reference_calls.txt"))
    reference_params = load_params(synth.write_study(tmp_path / "reference", "bowl"))
    reference = run_sweep(reference_params, "a", tmp_path / "reference.json", progress=False)

    folder, calls, pause = tmp_path / "killed", tmp_path / "calls.txt", tmp_path / "pause"
    params, out = synth.write_study(folder, "bowl", study_workers=2), folder / "a.json"
    sweep = start_sweep(params, out, SYNTH_CALLS=str(calls), SYNTH_PAUSE=str(pause), SYNTH_SLEEP="0.1")
    wait_until(lambda: len(synth.read_calls(calls)) >= 5)
    # Freeze the sweep: runs in flight finish and are stored, the next ones wait inside the trainer.
    pause.touch()
    settled = []
    wait_until(lambda: settled.append((len(synth.read_calls(calls)), stored(folder / "runs"))) or
               (len(settled) > 20 and len(set(settled[-20:])) == 1 and settled[-1][0] == settled[-1][1]))
    os.killpg(sweep.pid, signal.SIGKILL)
    sweep.communicate()
    finished_before_kill = len(synth.read_calls(calls))
    assert sweep.returncode == -signal.SIGKILL and not out.exists()
    assert 5 <= finished_before_kill < reference["compute"]["runs_planned"]
    assert len(list(RunStore(folder / "runs"))) == finished_before_kill  # every file a whole record

    pause.unlink()
    resumed = start_sweep(params, out, SYNTH_CALLS=str(calls), SYNTH_SLEEP="0.1")
    stdout, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, stderr
    result = json.loads(out.read_text())
    assert {key: result[key] for key in COMPARED} == {key: reference[key] for key in COMPARED}
    summary = [(run["key"], run["hparams"], run["loss"], run["status"]) for run in result["runs"]]
    assert sorted(summary, key=str) == sorted(
        [(run["key"], run["hparams"], run["loss"], run["status"]) for run in reference["runs"]], key=str)
    assert result["compute"]["runs_reused"] == finished_before_kill
    counts = collections.Counter(synth.read_calls(calls))
    assert set(counts.values()) == {1} and len(counts) == result["compute"]["runs_planned"]
    assert "best loss 3.0000" in stdout


def test_ctrl_c_stops_the_sweep_and_its_workers_and_keeps_finished_runs(tmp_path):
    folder, calls = tmp_path / "sweep", tmp_path / "calls.txt"
    params, out = synth.write_study(folder, "bowl", study_workers=2), folder / "a.json"
    sweep = start_sweep(params, out, SYNTH_CALLS=str(calls), SYNTH_SLEEP="0.3")
    wait_until(lambda: len(synth.read_calls(calls)) >= 2)
    os.killpg(sweep.pid, signal.SIGINT)  # what a terminal sends to the foreground process group
    _, stderr = sweep.communicate(timeout=60)
    assert sweep.returncode == 130
    assert "interrupted; finished runs are kept in the run store" in stderr and "Traceback" not in stderr
    assert not out.exists()
    wait_until(lambda: live_processes_in_group(sweep.pid) == [], timeout=10)  # no worker outlives the sweep
    records = list(RunStore(folder / "runs"))
    assert len(records) >= 2 and all(record.status == "ok" for record in records)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_on_a_terminal(tmp_path, monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    params = load_params(synth.write_study(tmp_path, "bowl"))
    run_sweep(params, "a", tmp_path / "a.json")
    last_frame = terminal.getvalue().rstrip("\n").split("\r")[-1]
    assert last_frame.startswith("sweep a: 100%") and "13/13" in last_frame and "best 3.0000" in last_frame


def test_progress_is_plain_lines_off_a_terminal(tmp_path, capsys):
    params = load_params(synth.write_study(tmp_path, "bowl"))
    run_sweep(params, "a", tmp_path / "a.json")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("sweep a: 1/") and " ok loss " in lines[0]
    assert lines[-1].startswith("sweep a: 13/13 ") and lines[-1].endswith("best 3.0000")
