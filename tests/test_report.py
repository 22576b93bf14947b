"""The report's answer paragraph, its short tables and its law figure, from the committed results and from a
synthetic study whose lr follows a known law (no training)."""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib
import pandas as pd
import pytest

from optsweep.analysis import analyze_sensitivity, fit_scaling_laws
from optsweep.params.settings import load_params
from optsweep.report import (
    LONGER_RUNS,
    MORE_OR_LONGER_RUNS,
    WIDER_GRID,
    DecisionCosts,
    RunCost,
    answer_paragraph,
    decision_costs,
    evidence_text,
    hypotheses_frame,
    law_curves,
    load_sweeps,
    plots,
    reasons_details,
    recommended_frame,
    sensitivity_frame,
    slices_frame,
    verdict_clause,
    what_would_decide,
)
from optsweep.results.documents import (
    HparamVerdict,
    ScaleOptimum,
    ScalingLaws,
    SensitivityResult,
    SweepResult,
    VerdictEvidence,
    read_document,
)
from optsweep.testing.tables import Truth, constant, run_table, scale_grid, sqrt2_grid

matplotlib.use("Agg")

REPO = Path(__file__).resolve().parents[1]
COSTS = DecisionCosts(
    one_more_seed=RunCost(runs=9, worker_hours=0.025, gpu_hours=1e-6),
    longer_runs=RunCost(runs=111, worker_hours=0.61, gpu_hours=4e-5),
    wider_grid={h: RunCost(runs=12, worker_hours=0.033, gpu_hours=2e-6) for h in ("lr", "warmup", "weight_decay")},
    edge_blocked={"warmup": {"n1d1": {"above": "warmup (64) must be shorter than the run (48 steps)"}}},
)


def lr_law(scale) -> float:
    return 1.79 * scale.n_params**-0.713 * scale.tokens**0.307


@pytest.fixture(scope="module")
def committed() -> tuple[SensitivityResult, ScalingLaws, list[SweepResult]]:
    params = load_params(REPO / "params/study.yaml")
    sensitivity = read_document(REPO / "results/sensitivity.json", SensitivityResult)
    laws = read_document(REPO / "results/scaling_law.json", ScalingLaws)
    return sensitivity, laws, load_sweeps(REPO / "results/sweeps", list(params.scales))


@pytest.fixture(scope="module")
def lr_moves() -> tuple[SensitivityResult, ScalingLaws]:
    """lr follows a known law in N and D; weight_decay is 0.1 at every scale."""
    scales = scale_grid([256, 512, 1024], [2e9, 8e9])
    optima = [lr_law(s) for s in scales]
    truth = Truth(
        optimum={"lr": lr_law, "weight_decay": constant(0.1)},
        curvature={"lr": 0.2, "weight_decay": 8.0},
        grid={"lr": sqrt2_grid(min(optima) / 3, max(optima) * 3), "weight_decay": [0.0, 0.1, 0.2]},
    )
    table = run_table(truth, scales)
    sensitivity = analyze_sensitivity(table)
    return sensitivity, fit_scaling_laws(table, sensitivity)


def test_answer_names_the_sensitive_law_with_its_exponent_intervals_and_the_constant(lr_moves):
    sensitivity, laws = lr_moves
    answer = answer_paragraph(sensitivity, laws, COSTS)
    law = laws.laws["lr"]
    assert answer.startswith("**lr** is sensitive to scale, its optimum moves with model size and data")
    assert law.form in answer
    for name in ("N_exponent", "D_exponent"):
        low, high = law.coefficients[name].ci95
        assert f"{name[0]} exponent {law.coefficients[name].estimate:.3g} [{low:.3g}, {high:.3g}]" in answer
    assert "**weight_decay**: 0.1" in answer
    assert "differences between neighbouring grid values, no seed runs" in answer
    assert "Nothing stayed inconclusive." in answer


def test_answer_shows_a_law_fitted_for_a_hyperparameter_that_is_not_sensitive(lr_moves):
    sensitivity, laws = lr_moves
    answer = answer_paragraph(sensitivity.model_copy(update={"sensitive": []}), laws, COSTS)
    assert answer.startswith("No hyperparameter was found sensitive to scale. Fitted anyway (analysis.laws_for): "
                             f"**lr** `{laws.laws['lr'].form}`")


def test_answer_on_the_committed_results_is_computed_from_them(committed):
    sensitivity, laws, sweeps = committed
    params = load_params(REPO / "params/study.yaml")
    costs = decision_costs(params, sweeps)
    answer = answer_paragraph(sensitivity, laws, costs)
    seeds = sensitivity.noise.estimates["seeds"]
    assert f"paired std {seeds['paired_std']:.3g}" in answer
    assert f"{100 * sensitivity.noise.relative_std:.3g}%" in answer
    assert f"{seeds['configs']} configs re-run in {seeds['runs']} runs ({seeds['dof']} degrees of freedom)" in answer
    lr = sensitivity.recommended["lr"]
    if sensitivity.hyperparameters["lr"].verdict == "insensitive" and lr.rule != "none":
        assert (f"**lr**: one value after the {lr.rule.replace('_', '-')} rule, {lr.value:.3g} at width "
                f"{lr.reference_width}") in answer
    for hparam in sensitivity.inconclusive:
        assert f"{hparam} (" in answer
    if any(what_would_decide(h, sensitivity.hyperparameters[h], costs) == MORE_OR_LONGER_RUNS
           for h in sensitivity.inconclusive):
        assert f"one more seed on each scale's best and its competitors costs {costs.one_more_seed}" in answer
    assert "{" not in answer and "_exponent" not in answer


def test_one_more_seed_and_a_wider_grid_cost_what_the_planner_counts(committed):
    params = load_params(REPO / "params/study.yaml")
    costs = decision_costs(params, committed[2])
    search, scales = params.search, len(params.scales)
    assert costs.one_more_seed.runs == scales * (1 + search.noise_candidates)  # the best and its competitors
    assert costs.wider_grid["lr"].runs == scales * 2 * search.passes  # two more values, every pass
    assert costs.longer_runs.worker_hours > costs.one_more_seed.worker_hours > 0
    assert costs.one_more_seed.gpu_hours > 0


def edge_verdict(edge: str | None) -> HparamVerdict:
    """A verdict whose optimum at scale n1d1 lies at the grid's `edge` (None: inside the grid); only the
    fields `what_would_decide` reads."""
    optimum = ScaleOptimum.model_construct(edge=edge)
    return HparamVerdict.model_construct(evidence=VerdictEvidence(at_edge=["n1d1"] if edge else []),
                                         optimum={"n1d1": optimum})


def test_an_optimum_at_the_grid_edge_asks_for_a_wider_grid_else_for_more_or_longer_runs():
    assert what_would_decide("lr", edge_verdict("above"), COSTS) == WIDER_GRID
    assert what_would_decide("lr", edge_verdict(None), COSTS) == MORE_OR_LONGER_RUNS


def test_an_optimum_at_the_longest_warmup_the_runs_allow_asks_for_longer_runs():
    assert what_would_decide("warmup", edge_verdict("above"), COSTS) == LONGER_RUNS
    below = edge_verdict("below")
    assert what_would_decide("warmup", below, COSTS) == WIDER_GRID  # a shorter warmup is always a valid run


def test_the_committed_warmup_grid_cannot_grow_past_the_shortest_run(committed):
    params = load_params(REPO / "params/study.yaml")
    costs = decision_costs(params, committed[2])
    capped = set()
    for sweep in committed[2]:
        steps = sweep.scale["steps"]
        valid = [w for w in sweep.grid["warmup"] if w < steps]
        if 2 * max(valid) >= steps:  # the grid doubles warmup: its next value is no shorter than the run
            capped.add(sweep.scale["name"])
    assert set(costs.edge_blocked.get("warmup", {})) == capped
    assert all(list(ends) == ["above"] for ends in costs.edge_blocked.get("warmup", {}).values())
    assert "lr" not in costs.edge_blocked  # any lr is a valid run


def test_verdict_clause_keeps_the_words_before_the_numbers():
    reason = "beta1: inconclusive, what one value costs is within its error: one value (0.66) costs 0.037."
    assert verdict_clause("beta1", reason) == "inconclusive, what one value costs is within its error"


def test_evidence_is_short_text_with_three_significant_digits():
    evidence = {"regret": {"n1d1": 0.0123456, "n1d5": 0.0}, "best_rule": "inverse_sqrt_width",
                "pairs": [{"shorter": "n1d1", "longer": "n1d5", "regret_constant": 0.320362}],
                "reason": "a long sentence the sensitivity table holds", "outside_grid": []}
    assert evidence_text(evidence) == ("regret: n1d1 0.0123, n1d5 0; best rule: inverse sqrt width; "
                                       "pairs: n1d1 -> n1d5 (regret constant 0.32)")


def test_tables_hold_no_raw_json_and_short_reasons_with_the_full_ones_collapsed(committed):
    sensitivity = committed[0]
    numbers = hypotheses_frame(sensitivity)["numbers"]
    assert not numbers.str.contains(r"[{}\"]").any() and numbers.str.len().max() < 400
    for frame in (sensitivity_frame(sensitivity), recommended_frame(sensitivity, committed[1])):
        assert not frame["reason"].str.contains(":").any()
        assert frame["reason"].str.len().max() < 130
    details = reasons_details(sensitivity)
    assert details.startswith("<details>")
    for verdict in sensitivity.hyperparameters.values():
        assert html.escape(verdict.reason) in details


def test_law_figure_shows_the_optima_against_n_and_against_d_inside_the_band(lr_moves):
    laws = lr_moves[1]
    curves = law_curves(laws, "lr")
    assert set(curves["along"]) == {"N", "D"}
    assert (curves["lower"] <= curves["estimate"]).all() and (curves["estimate"] <= curves["upper"]).all()
    along_d = curves[curves["along"] == "D"]
    assert along_d.groupby("n_params")["tokens"].nunique().min() > 1  # D moves at each fixed N
    figure = plots.law_points(pd.DataFrame([point.model_dump() for point in laws.laws["lr"].points]), curves, "lr")
    left, right = figure.axes[:2]
    assert left.get_xlabel().startswith("N") and right.get_xlabel().startswith("D")
    assert len(left.collections) >= 2 and len(right.collections) >= 2  # bands and points on each


def test_slice_panels_on_a_log_axis_label_the_grid_values_only(committed):
    sweeps = committed[2]
    figure = plots.loss_slices(slices_frame(sweeps))
    figure.canvas.draw()
    frame = slices_frame(sweeps)
    for ax in figure.axes:
        if ax.get_xscale() != "log":
            continue
        values = set(frame.loc[frame["hparam"] == ax.get_title(), "value"])
        assert set(ax.get_xticks()) <= values and len(ax.get_xticks()) >= 2
        assert not any(label.get_text() for label in ax.get_xticklabels(minor=True))  # no overlapping minor labels
