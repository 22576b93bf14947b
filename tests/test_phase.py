"""Every scale of a phase at once on one pool: the same results as one sweep per scale, every run trained
once, untouched result files left as they are."""

from __future__ import annotations

import json
import subprocess

import pytest

import optsweep.testing.trainers as synth
from optsweep.params.settings import load_params
from optsweep.search import run_phase, run_sweep

COMPARED = ("best", "best_loss", "grid", "slices", "trajectory", "passes", "converged", "runs")


def _without_volatile(document: dict) -> dict:
    """What a search found; runs in key order (a shared pool finishes them in another order)."""
    return {key: sorted(document[key], key=lambda run: run["key"]) if key == "runs" else document[key]
            for key in COMPARED}


def test_a_phase_on_one_pool_finds_what_separate_sweeps_find(tmp_path, monkeypatch):
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("SYNTH_CALLS", str(calls))
    params = load_params(synth.write_study(tmp_path / "phase", "scaling", study_workers=2))
    results = run_phase(params, "phase1", tmp_path / "phase" / "sweeps", progress=False)
    keys = {run.key for result in results.values() for run in result.runs}
    assert len(synth.read_calls(calls)) == len(keys)  # every run of both scales trained once
    alone = load_params(synth.write_study(tmp_path / "alone", "scaling", study_workers=2))
    for scale in ("a", "b"):
        reference = run_sweep(alone, scale, tmp_path / "alone" / f"{scale}.json", progress=False)
        shared = json.loads((tmp_path / "phase" / "sweeps" / f"{scale}.json").read_text())
        assert _without_volatile(shared) == _without_volatile(reference)


def test_a_phase_again_rewrites_no_result_file_and_an_edited_scale_only_its_own(tmp_path):
    path = synth.write_study(tmp_path, "scaling", study_workers=2)
    out = tmp_path / "sweeps"
    run_phase(load_params(path), "phase1", out, progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")}
    run_phase(load_params(path), "phase1", out, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")} == before
    raw = json.loads(json.dumps(__import__("yaml").safe_load(path.read_text())))
    raw["scales"]["b"]["tokens"] = 16384
    path.write_text(__import__("yaml").safe_dump(raw))
    run_phase(load_params(path), "phase1", out, progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")}
    assert after["a.json"] == before["a.json"] and after["b.json"] != before["b.json"]


def test_the_cli_runs_a_phase_and_refuses_an_ambiguous_call(tmp_path):
    params = synth.write_study(tmp_path, "bowl", study_workers=2)
    result = subprocess.run([synth.OPTSWEEP, "sweep", "--params", str(params), "--phase", "phase1", "--out",
                             str(tmp_path / "sweeps")], capture_output=True, text=True, env=synth.cli_env())
    assert result.returncode == 0, result.stderr
    assert sorted(line.split(":")[0] for line in result.stdout.splitlines()) == ["a", "b"]
    both = subprocess.run([synth.OPTSWEEP, "sweep", "--params", str(params), "--phase", "phase1", "--scale", "a"],
                          capture_output=True, text=True, env=synth.cli_env())
    assert both.returncode == 2 and "either --scale NAME" in both.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_failed_runs_of_any_scale_fail_the_phase_after_writing_every_result(tmp_path, workers):
    from optsweep.search import FailedRuns

    marker = tmp_path / "broken"
    marker.touch()
    params = load_params(synth.write_study(tmp_path, "broken_while_marked", study_workers=workers))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SYNTH_BROKEN", str(marker))
        with pytest.raises(FailedRuns, match="a, b: .* run\\(s\\) failed"):
            run_phase(params, "phase1", tmp_path / "sweeps", progress=False)
    assert sorted(p.name for p in (tmp_path / "sweeps").glob("*.json")) == ["a.json", "b.json"]
