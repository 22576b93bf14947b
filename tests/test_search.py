"""Coordinate descent on synthetic loss surfaces with known optima (inline worker, so these run in seconds)."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest

import optsweep.testing.trainers as synth
from optsweep.params.settings import ParamsError, load_params
from optsweep.results.documents import SweepResult
from optsweep.runs.store import RunStore
from optsweep.search import FailedRuns, run_sweep

BOWL_OPTIMUM = {"lr": 1e-2, "weight_decay": 0.2, "beta2": 0.99}
RIDGE = {
    "grid": {"lr": [1e-3 * 2**i for i in range(9)], "weight_decay": [0.02 * i for i in range(9)]},
    "baseline": {"lr": 1e-3, "min_lr_ratio": 0.0, "warmup": 4, "beta1": 0.9, "beta2": 0.95,
                 "weight_decay": 0.0, "eps": 1e-8, "clip": 1.0},
    "search": {"passes": 10, "tolerance": 1e-3, "extend_edges": 0},
}


def sweep(folder: Path, trainer: str, scale: str = "a", sensitivity: Path | None = None, **sections) -> dict:
    params = load_params(synth.write_study(folder, trainer, **sections))
    return run_sweep(params, scale, folder / f"{scale}.json", sensitivity_path=sensitivity and str(sensitivity),
                     progress=False)


def picked(hparams: dict, names=("lr", "weight_decay", "beta2")) -> dict:
    return {name: hparams[name] for name in names}


def strict_load(path: Path) -> dict:
    def refuse(constant: str):
        raise ValueError(f"non-strict JSON constant {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_separable_bowl_reaches_the_grid_optimum_in_one_pass_and_stops_after_the_confirming_pass(tmp_path):
    result = sweep(tmp_path, "bowl")
    assert picked(result["best"]) == BOWL_OPTIMUM
    assert result["best_loss"] == pytest.approx(3.0)
    assert (result["passes"], result["converged"], result["phase"]) == (2, True, "phase1")
    first_pass = [step for step in result["trajectory"] if step["pass"] == 1]
    assert picked(first_pass[-1]["baseline"]) == BOWL_OPTIMUM
    assert [step["hparam"] for step in first_pass] == ["lr", "beta2", "weight_decay"]
    assert all(step["baseline"] == result["best"] for step in result["trajectory"] if step["pass"] == 2)
    # the start baseline, common random numbers, and the 1-D slices through the best
    assert picked(result["baseline"]) == {"lr": 3e-3, "weight_decay": 0.1, "beta2": 0.95}
    assert {run["seed"] for run in result["runs"]} == {0}
    for h, line in result["slices"].items():
        assert [point["value"] for point in line] == result["grid"][h]
        assert min(line, key=lambda point: point["loss"])["value"] == result["best"][h]
    assert result["near_best"][0] == {"hparams": result["best"], "loss": result["best_loss"]}
    compute = result["compute"]
    assert compute["runs_planned"] == compute["runs_trained"] == len(result["runs"])
    assert compute["tokens"] == len(result["runs"]) * result["scale"]["tokens"]
    assert result["provenance"]["trainer"] == "optsweep.testing.trainers:bowl"
    assert strict_load(tmp_path / "a.json") == result


def test_hitting_the_pass_bound_reports_not_converged(tmp_path):
    result = sweep(tmp_path, "bowl", search={"passes": 1, "tolerance": 3e-3, "extend_edges": 0})
    assert (result["passes"], result["converged"]) == (1, False)
    assert picked(result["best"]) == BOWL_OPTIMUM
    # the slices are completed around the best even though the last pass moved the baseline
    assert all(point["status"] == "ok" for line in result["slices"].values() for point in line)


def runs_beating_the_best(result: dict) -> list:
    return SweepResult.model_validate(result).runs_beating_best()


def test_a_slice_run_that_beats_the_best_continues_the_search_and_then_becomes_the_best(tmp_path):
    # One pass along the ridge's valley ends far from its floor: the slices through that best hold better runs
    result = sweep(tmp_path, "ridge", **{**RIDGE, "search": {**RIDGE["search"], "passes": 1}})
    lowest = min(run["loss"] for run in result["runs"] if run["status"] == "ok")
    assert result["best_loss"] == lowest and runs_beating_the_best(result) == []
    assert (result["passes"], result["converged"]) == (1, False)
    assert "no pass has confirmed it" in result["why_not_converged"]
    assert result["trajectory"][-1] == {"pass": 1, "hparam": "lowest run", "baseline": result["best"],
                                        "loss": result["best_loss"]}
    for h, line in result["slices"].items():  # the slices run through the reported best
        assert {point["value"]: point["loss"] for point in line}[result["best"][h]] == result["best_loss"]
    # With passes left, the same runs continue the descent instead, and it converges on the floor
    more = sweep(tmp_path / "more", "ridge", **{**RIDGE, "search": {**RIDGE["search"], "passes": 20}})
    assert more["converged"] and more["why_not_converged"] is None and runs_beating_the_best(more) == []


def test_a_competitor_that_wins_on_the_noise_seeds_becomes_the_best(tmp_path):
    result = sweep(tmp_path, "lucky_seed", search={"passes": 4, "tolerance": 3e-3, "noise_seeds": 2, "extend_edges": 0})
    lucky = [run for run in result["runs"] if picked(run["hparams"]) == BOWL_OPTIMUM and run["seed"] == 0]
    assert lucky and lucky[0]["loss"] < result["best_loss"]  # the lowest base-seed run is not the best ...
    assert picked(result["best"]) == {**BOWL_OPTIMUM, "beta2": 0.95}  # ... on the seeds' mean its neighbour is
    assert runs_beating_the_best(result) == [] and result["converged"]
    assert result["noise"]["configs"][0]["hparams"] == result["best"]
    assert "lowest run" in [step["hparam"] for step in result["trajectory"]]


def test_ridge_keeps_improving_across_passes(tmp_path):
    result = sweep(tmp_path, "ridge", **RIDGE)
    loss_after_pass = {step["pass"]: step["loss"] for step in result["trajectory"]}
    assert loss_after_pass[1] > loss_after_pass[2] > loss_after_pass[3]
    assert result["passes"] >= 4 and result["converged"]
    assert result["best_loss"] < loss_after_pass[1] - 0.3


def test_diverged_configs_never_become_the_baseline_and_do_not_stop_the_search(tmp_path):
    grid = {"lr": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1], "weight_decay": [0.0, 0.1, 0.2], "beta2": [0.9, 0.95, 0.99]}
    result = sweep(tmp_path, "diverging", grid=grid)
    assert picked(result["best"]) == BOWL_OPTIMUM
    assert all(step["baseline"]["lr"] < 3e-2 for step in result["trajectory"])
    diverged = [run for run in result["runs"] if run["hparams"]["lr"] >= 3e-2]
    assert diverged and all(run["status"] == "diverged" and run["loss"] is None for run in diverged)
    assert {run["reason"] for run in diverged if run["hparams"]["lr"] == 3e-2} == {"loss above 7 after warmup"}
    assert [point["status"] for point in result["slices"]["lr"]] == ["ok", "ok", "ok", "diverged", "diverged"]
    strict_load(tmp_path / "a.json")  # NaN losses were written as null


def test_a_diverged_start_is_left_for_any_finite_loss(tmp_path):
    grid = {"lr": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1], "weight_decay": [0.0, 0.1, 0.2], "beta2": [0.9, 0.95, 0.99]}
    baseline = {"lr": 1e-1, "min_lr_ratio": 0.0, "warmup": 4, "beta1": 0.9, "beta2": 0.95,
                "weight_decay": 0.1, "eps": 1e-8, "clip": 1.0}
    result = sweep(tmp_path, "diverging", grid=grid, baseline=baseline)
    assert picked(result["best"]) == BOWL_OPTIMUM


@pytest.mark.parametrize(("tolerance", "kept"), [(3e-3, True), (0.0, False)])
def test_noise_below_the_tolerance_keeps_the_incumbent(tmp_path, tolerance, kept):
    result = sweep(tmp_path, "noisy", search={"passes": 3, "tolerance": tolerance, "noise_seeds": 2})
    assert (result["best"] == result["baseline"]) is kept
    if kept:
        assert (result["passes"], result["converged"]) == (1, True)
        assert len(result["near_best"]) == len([run for run in result["runs"] if run["seed"] == 0])
    noise = result["noise"]
    assert noise["seeds"] == [0, 1, 2]
    assert len(noise["configs"]) == 3 and noise["configs"][0]["hparams"] == result["best"]
    assert all(len(config["losses"]) == 3 for config in noise["configs"])
    assert 2e-4 < noise["std"] < 3e-3  # the trainer's seed noise is 1e-3
    assert {run["seed"] for run in result["runs"]} == {0, 1, 2}


def test_relative_tolerance_scales_with_the_loss(tmp_path):
    # 1% of a loss of ~3 is 0.03: the lr step (gain 0.14) is taken, the beta2 step (gain 0.008) is not
    result = sweep(tmp_path, "bowl", search={"passes": 3, "tolerance": 0.01, "tolerance_kind": "relative"})
    assert (result["best"]["lr"], result["best"]["beta2"]) == (1e-2, 0.95)
    assert result["tolerance_kind"] == "relative"


def test_neighbourhood_stop_rule_converges_when_the_best_neighbourhood_is_complete(tmp_path):
    result = sweep(tmp_path, "bowl", search={"passes": 10, "tolerance": 3e-3, "stop_rule": "neighbourhood"})
    assert picked(result["best"]) == BOWL_OPTIMUM and result["converged"]
    assert result["stop_rule"] == "neighbourhood"
    evaluated = [run["hparams"] for run in result["runs"]]
    for h, values in result["grid"].items():
        assert all({**result["best"], h: value} in evaluated for value in values)
    assert {step["hparam"] for step in result["trajectory"]} == {"neighbourhood"}


def test_invalid_configs_are_skipped_with_their_reason_and_never_trained(tmp_path, monkeypatch):
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("SYNTH_CALLS", str(calls))
    result = sweep(tmp_path, "bowl", grid={"lr": [1e-3, 1e-2], "warmup": [4, 500]})  # 32 steps per run
    skipped = [run for run in result["runs"] if run["status"] == "skipped"]
    assert [run["hparams"]["warmup"] for run in skipped] == [500]
    assert "warmup (500) must be shorter than the run (32 steps)" in skipped[0]["reason"]
    assert len(synth.read_calls(calls)) == result["compute"]["runs_trained"] == len(result["runs"]) - 1
    assert result["best"]["warmup"] == 4


def test_a_second_sweep_reuses_every_stored_run(tmp_path, monkeypatch):
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("SYNTH_CALLS", str(calls))
    first = sweep(tmp_path, "bowl")
    second = sweep(tmp_path, "bowl")
    assert second["compute"]["runs_trained"] == 0
    assert second["compute"]["runs_reused"] == first["compute"]["runs_planned"]
    assert [(run["key"], run["loss"]) for run in second["runs"]] == [(run["key"], run["loss"]) for run in first["runs"]]
    assert len(synth.read_calls(calls)) == first["compute"]["runs_trained"]


def test_scales_of_the_same_shape_share_their_runs(tmp_path, monkeypatch):
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("SYNTH_CALLS", str(calls))
    shape = {"width": 32, "depth": 1, "heads": 2, "seq_len": 32, "batch_size": 8, "tokens": 8192}
    scales = {"a": shape, "b": {**shape, "width": 64}}
    law_scales = {"a_again": shape}
    sweep(tmp_path, "bowl", scales=scales, law_scales=law_scales)
    again = sweep(tmp_path, "bowl", scale="a_again", scales=scales, law_scales=law_scales)
    assert again["compute"]["runs_trained"] == 0 and again["scale"]["name"] == "a_again"


def test_a_changed_grid_trains_only_the_new_configs(tmp_path, monkeypatch):
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("SYNTH_CALLS", str(calls))
    grid = {"lr": [1e-3, 3e-3, 1e-2, 3e-2], "weight_decay": [0.0, 0.1, 0.2], "beta2": [0.9, 0.95, 0.99]}
    first = sweep(tmp_path, "bowl", grid=grid)
    trained_before = len(synth.read_calls(calls))
    second = sweep(tmp_path, "bowl", grid={**grid, "lr": grid["lr"] + [1e-4]})
    new_calls = [json.loads(identity) for identity in synth.read_calls(calls)[trained_before:]]
    new_runs = [run for run in second["runs"] if run["hparams"]["lr"] == 1e-4]
    assert new_calls and all(call["hparams"]["lr"] == 1e-4 for call in new_calls)
    assert second["compute"]["runs_trained"] == len(new_calls) == len(new_runs)
    assert second["compute"]["runs_reused"] == first["compute"]["runs_planned"]
    assert max(collections.Counter(synth.read_calls(calls)).values()) == 1


def test_a_crashing_run_is_retried_once_stored_as_failed_and_trained_again_by_the_next_sweep(tmp_path, monkeypatch):
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("SYNTH_CALLS", str(calls))
    with pytest.raises(FailedRuns, match="run\\(s\\) failed .*cannot train lr 0.03"):
        sweep(tmp_path, "broken_at_high_lr")
    result = strict_load(tmp_path / "a.json")  # written before the sweep reports the failures
    failed = [run for run in result["runs"] if run["status"] == "failed"]
    assert failed and all(run["loss"] is None and "cannot train lr 0.03" in run["reason"] for run in failed)
    assert {run["key"] for run in failed} == {entry["key"] for entry in result["failed"]}
    assert picked(result["best"]) == BOWL_OPTIMUM
    counts = collections.Counter(synth.read_calls(calls))
    assert {counts[json.dumps({"hparams": run["hparams"], "seed": 0}, sort_keys=True)] for run in failed} == {2}
    records = {record.key: record for record in RunStore(tmp_path / "runs")}
    assert all(records[run["key"]].attempts == 2 and "RuntimeError" in records[run["key"]].error for run in failed)
    calls_before = len(synth.read_calls(calls))
    with pytest.raises(FailedRuns):
        sweep(tmp_path, "broken_at_high_lr")
    retried = synth.read_calls(calls)[calls_before:]  # only the failed runs, each on its two attempts
    assert sorted(retried) == sorted(json.dumps({"hparams": run["hparams"], "seed": 0}, sort_keys=True)
                                     for run in failed for _ in range(2))


def test_a_transient_crash_succeeds_on_the_retry(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTH_MARKS", str(tmp_path / "marks"))
    result = sweep(tmp_path, "flaky")
    assert {run["status"] for run in result["runs"]} == {"ok"}
    assert {record.attempts for record in RunStore(tmp_path / "runs")} == {2}


def test_lr_transfer_rule_moves_every_lr_to_the_scale_width(tmp_path):
    study = {"study_lr_transfer": {"rule": "inverse_width", "reference_width": 32}}
    result = sweep(tmp_path, "bowl", scale="b", **study)  # width 64: every lr halves
    assert result["grid"]["lr"] == [5e-4, 1.5e-3, 5e-3, 1.5e-2]
    assert result["baseline"]["lr"] == 1.5e-3
    assert result["provenance"]["lr_transfer"] == {"rule": "inverse_width", "reference_width": 32, "factor": 0.5}
    assert {run["hparams"]["lr"] for run in result["runs"]} <= set(result["grid"]["lr"])


# --- the law phase: only the sensitive hyperparameters move ----------------------------------------------

RECOMMENDED = {
    "lr": {"value": 2e-2, "rule": "inverse_width", "reference_width": 32},
    "min_lr_ratio": {"value": 0.0, "rule": "none", "reference_width": None},
    "warmup": {"value": 8, "rule": "none", "reference_width": None},
    "beta1": {"value": 0.9, "rule": "none", "reference_width": None},
    "beta2": {"value": 0.98, "rule": "none", "reference_width": None},
    "eps": {"value": 1e-10, "rule": "none", "reference_width": None},
    "clip": {"value": 1.0, "rule": "none", "reference_width": None},
}


def test_law_phase_frees_only_the_sensitive_hyperparameters(tmp_path):
    sensitivity = tmp_path / "sensitivity.json"
    sensitivity.write_text(json.dumps({"sensitive": ["weight_decay", "batch_size"], "recommended": RECOMMENDED}))
    result = sweep(tmp_path, "bowl", scale="b", sensitivity=sensitivity)
    assert (result["phase"], result["free"]) == ("law", ["weight_decay"])
    assert result["fixed"]["lr"] == 1e-2  # 2e-2 at width 32, inverse width rule, at width 64
    assert result["fixed"]["warmup"] == 8 and isinstance(result["fixed"]["warmup"], int)
    for run in result["runs"]:
        assert {h: v for h, v in run["hparams"].items() if h != "weight_decay"} == result["fixed"]
    assert result["best"]["weight_decay"] == 0.2 and result["converged"]


def test_law_phase_also_frees_the_laws_asked_for(tmp_path):
    sensitivity = tmp_path / "sensitivity.json"
    sensitivity.write_text(json.dumps({"sensitive": ["weight_decay"], "recommended": RECOMMENDED}))
    result = sweep(tmp_path, "bowl", scale="b", sensitivity=sensitivity, analysis={"laws_for": ["lr"]})
    assert result["free"] == ["lr", "weight_decay"] and "lr" not in result["fixed"]
    assert len({run["hparams"]["lr"] for run in result["runs"]}) > 1


def test_law_phase_keeps_the_baseline_of_hyperparameters_the_analysis_could_not_judge(tmp_path):
    recommended = {h: entry for h, entry in RECOMMENDED.items() if h != "beta1"}
    sensitivity = tmp_path / "sensitivity.json"
    sensitivity.write_text(json.dumps({"sensitive": ["lr"], "unjudged": ["beta1"],
                                       "recommended": {**recommended, "weight_decay": {"value": 0.2}}}))
    result = sweep(tmp_path, "bowl", sensitivity=sensitivity)
    assert result["free"] == ["lr"] and result["fixed"]["beta1"] == 0.9 and result["fixed"]["weight_decay"] == 0.2


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (None, "sensitivity file not found"),
        ("{not json", "not valid JSON"),
        ({"recommended": RECOMMENDED}, "not a valid LawPhaseInputs: field sensitive: Field required"),
        ({"sensitive": "lr", "recommended": RECOMMENDED}, "field sensitive: Input should be a valid list"),
        ({"sensitive": ["lr"]}, "not a valid LawPhaseInputs: field recommended: Field required"),
        ({"sensitive": ["lr"], "recommended": {k: v for k, v in RECOMMENDED.items() if k != "beta1"}},
         "recommended: missing hyperparameter 'beta1'"),
        ({"sensitive": ["lr"], "recommended": {**RECOMMENDED, "weight_decay": {"value": "0.1"}}},
         "recommended.weight_decay.value"),
        ({"sensitive": ["lr"], "recommended": {**RECOMMENDED, "weight_decay": {"value": 0.1, "rule": "cubic"}}},
         "recommended.weight_decay: "),
        ({"sensitive": ["lr"], "recommended": {**RECOMMENDED, "weight_decay": {"value": 0.1}, "beta1": {"value": 1.5}}},
         "recommended: optimizer .adamw., beta1: 1.5 is outside \\[0, 1\\)"),
    ],
)
def test_a_bad_sensitivity_file_fails_before_any_run(tmp_path, document, message):
    sensitivity = tmp_path / "sensitivity.json"
    if document is not None:
        sensitivity.write_text(document if isinstance(document, str) else json.dumps(document))
    with pytest.raises(ParamsError, match=message) as error:
        sweep(tmp_path, "bowl", sensitivity=sensitivity)
    assert str(sensitivity) in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "runs").exists()


def test_an_optimum_on_a_grid_edge_extends_the_grid_by_its_own_step_and_records_it(tmp_path):
    """The bowl's lr optimum (1e-2) lies past the top of [1e-3, 3e-3]: the grid grows geometrically (x3)."""
    result = sweep(tmp_path, "bowl", grid={"lr": [1e-3, 3e-3], "weight_decay": [0.1, 0.2, 0.3]},
                   search={"passes": 3, "tolerance": 1e-3, "extend_edges": 2})
    grown = [(e["hparam"], e["end"], e["value"]) for e in result["grid_extensions"]]
    assert grown == [("lr", "high", 9e-3), ("lr", "high", 2.7e-2)]
    assert result["grid"]["lr"] == [1e-3, 3e-3, 9e-3, 2.7e-2]
    assert result["best"]["lr"] == 9e-3 and result["converged"]
    assert [point["value"] for point in result["slices"]["lr"]] == [1e-3, 3e-3, 9e-3, 2.7e-2]


def test_the_steps_past_several_edges_train_side_by_side_from_the_optimum_they_extend(tmp_path, monkeypatch):
    """lr and weight decay both peak past the tops of their grids: both steps go out as one batch from that
    optimum, so two workers train them at the same time (the sleeper's runs record when they ran)."""
    monkeypatch.setenv("SYNTH_SLEEP", "0.5")
    result = sweep(tmp_path, "sleeper", grid={"lr": [1e-3, 3e-3], "weight_decay": [0.05, 0.1]},
                   search={"passes": 3, "tolerance": 1e-3, "extend_edges": 1}, study_workers=2)
    steps = result["grid_extensions"]
    assert {(e["hparam"], e["value"]) for e in steps} == {("lr", 9e-3), ("weight_decay", 0.2)}
    edge_optimum = next(run["hparams"] for run in result["runs"] if run["loss"] == steps[0]["edge_loss"])
    ran = {json.dumps(run["hparams"], sort_keys=True): run["result"] for run in result["runs"] if run["seed"] == 0}
    (first, second) = (ran[json.dumps({**edge_optimum, e["hparam"]: e["value"]}, sort_keys=True)] for e in steps)
    assert first["started"] < second["ended"] and second["started"] < first["ended"]
    assert (result["best"]["lr"], result["best"]["weight_decay"]) == (9e-3, 0.2)


def test_edge_extension_stops_at_the_limit_and_at_the_domain(tmp_path):
    limited = sweep(tmp_path / "limit", "bowl", grid={"lr": [1e-4, 3e-4]},
                    baseline={**RIDGE["baseline"], "lr": 1e-4, "weight_decay": 0.2, "beta2": 0.99},
                    search={"passes": 3, "tolerance": 1e-3, "extend_edges": 1})
    assert [(e["hparam"], e["value"]) for e in limited["grid_extensions"]] == [("lr", 9e-4)]
    assert limited["best"]["lr"] == 9e-4  # still on the (grown) edge: the analysis sees it as an edge optimum
    bounded = sweep(tmp_path / "bound", "bowl", grid={"beta2": [0.9, 0.95]},
                    baseline={**RIDGE["baseline"], "lr": 1e-2, "weight_decay": 0.2},
                    search={"passes": 3, "tolerance": 1e-4, "extend_edges": 5})
    values = [e["value"] for e in bounded["grid_extensions"]]
    assert values[:2] == [0.975, 0.9875] and all(v < 1 for v in values)  # 1 - beta halves, never reaches 1
    off = sweep(tmp_path / "off", "bowl", grid={"lr": [1e-3, 3e-3]}, search={"passes": 3, "extend_edges": 0})
    assert off["grid_extensions"] == [] and off["best"]["lr"] == 3e-3


def test_a_sweep_result_with_a_missing_or_wrong_field_fails_in_one_line_naming_it(tmp_path):
    from optsweep.results.documents import SweepResult, read_document

    sweep(tmp_path, "bowl")
    path = tmp_path / "a.json"
    assert read_document(path, SweepResult).best == json.loads(path.read_text())["best"]
    document = json.loads(path.read_text())
    del document["best_loss"]
    document["runs"][0]["status"] = "exploded"
    path.write_text(json.dumps(document))
    with pytest.raises(ParamsError, match=r"a\.json: not a valid SweepResult: field best_loss: Field required$"):
        read_document(path, SweepResult)
    document["best_loss"] = 3.0
    path.write_text(json.dumps(document))
    with pytest.raises(ParamsError, match=r"field runs\.0\.status: Input should be 'ok', 'diverged'"):
        read_document(path, SweepResult)
