"""The answer at the top of the report: one paragraph saying what the study found, how sure it is, and what
would decide what it could not."""

from __future__ import annotations

from dataclasses import dataclass

from ..params.settings import StudyParams
from ..results.documents import (
    HparamLaw,
    HparamVerdict,
    RecommendedConstant,
    ScalingLaws,
    SensitivityResult,
    SweepResult,
)
from ..runs.store import RunStatus
from ..runs.trainer import invalid_reason, make_run_spec
from ..search import next_value_past_edge
from ..search.plan import ASSUMED_MFU, planned_runs, scale_plans
from .tables import grid_edges

WIDER_GRID, LONGER_RUNS, MORE_OR_LONGER_RUNS = "a wider grid", "longer runs", "more seeds or longer runs"


def what_would_decide(hparam: str, verdict: HparamVerdict, costs: DecisionCosts) -> str:
    """For an inconclusive verdict: a wider grid when an optimum lies at a grid edge that can grow (its true value
    is beyond it), longer runs when every such edge is the longest the runs allow (warmup at a short run's
    length), else more seeds or longer runs (the margin is within its error)."""
    edges = grid_edges(verdict)
    if not edges:
        return MORE_OR_LONGER_RUNS
    blocked = costs.edge_blocked.get(hparam, {})
    optima = verdict.optimum
    if all(scale in optima and optima[scale].edge in blocked.get(scale, {}) for scale in edges):
        return LONGER_RUNS
    return WIDER_GRID


@dataclass(frozen=True)
class RunCost:
    """Runs the study's planner counts for one way to decide, and what they would take."""

    runs: int
    worker_hours: float  # at the mean run time this study's sweeps measured at each scale
    gpu_hours: float  # the planner's GPU-hours per run (`optsweep plan`: its assumed GPU and utilization)

    def __str__(self) -> str:
        return (f"{self.runs} runs, ~{self.worker_hours:.2g} worker-hours here, ~{self.gpu_hours:.2g} GPU-hours at "
                f"the planner's {ASSUMED_MFU:.0%} MFU")


@dataclass(frozen=True)
class DecisionCosts:
    """What deciding the inconclusive verdicts would cost over the phase-1 scales."""

    one_more_seed: RunCost  # one more noise seed for the best and its competitors
    longer_runs: RunCost  # the phase-1 sweeps again at twice the tokens (the planner's upper bound)
    wider_grid: dict[str, RunCost]  # hparam -> one more grid value at each end, over every pass
    # hparam -> scale -> end ("below"/"above") -> why the value one grid step past that end is not a valid run
    # there (warmup beyond a short run): at such an edge only longer runs can move the optimum further
    edge_blocked: dict[str, dict[str, dict[str, str]]]


def decision_costs(params: StudyParams, sweeps: list[SweepResult]) -> DecisionCosts:
    """The costs of `DecisionCosts`: run counts from the planner (`optsweep plan`'s `planned_runs`, as the
    difference between the study and the study changed that way), GPU-hours per run from the planner, wall time
    per run as measured."""
    phase1 = [s for s in sweeps if s.phase == "phase1"]
    seconds_per_run = {str(s.scale["name"]): _measured_run_seconds(s) for s in phase1}
    gpu_hours_per_run = {plan.scale: plan.run_gpu_hours for plan in scale_plans(params)
                         if plan.phase == "phase1" and plan.optimizer == params.study.optimizer}
    free = params.search_order()
    planned = _planned_upper_bounds(params, free)

    def cost(runs: dict[str, int], length: float = 1.0) -> RunCost:
        return RunCost(runs=sum(runs.values()),
                       worker_hours=sum(n * seconds_per_run.get(s, 0.0) for s, n in runs.items()) * length / 3600,
                       gpu_hours=sum(n * gpu_hours_per_run.get(s, 0.0) for s, n in runs.items()) * length)

    def more_than_planned(changed: StudyParams) -> RunCost:
        return cost({scale: n - planned[scale] for scale, n in _planned_upper_bounds(changed, free).items()})

    search = params.search.model_copy(update={"noise_seeds": params.search.noise_seeds + 1})
    return DecisionCosts(
        one_more_seed=more_than_planned(params.model_copy(update={"search": search})),
        longer_runs=cost(planned, length=2.0),
        wider_grid={h: more_than_planned(params.model_copy(update={"grid": {**params.grid, h: _widened(h, v)}}))
                    for h, v in params.grid.items() if h in free},
        edge_blocked={h: blocked for h in free if (blocked := _edge_blocked(params, phase1, h))},
    )


def _planned_upper_bounds(params: StudyParams, free: list[str]) -> dict[str, int]:
    return {name: planned_runs(params, name, free)[1] for name in params.scales}


def _measured_run_seconds(sweep: SweepResult) -> float:
    """Mean wall seconds of one of the sweep's finished runs (as each run's trainer result records them)."""
    results = [run.result or {} for run in sweep.runs if run.status in (RunStatus.OK, RunStatus.DIVERGED)]
    return sum(r.get("wall_s", 0.0) for r in results) / len(results) if results else 0.0


def _widened(hparam: str, values: list[float | int]) -> list[float | int]:
    """The grid with one more value at each end, as the search grows a grid past an edge."""
    ordered = sorted(values)
    if len(ordered) < 2:
        return ordered
    return [next_value_past_edge(hparam, ordered[0], ordered[1]), *ordered,
            next_value_past_edge(hparam, ordered[-1], ordered[-2])]


def _edge_blocked(params: StudyParams, sweeps: list[SweepResult], hparam: str) -> dict[str, dict[str, str]]:
    """Per scale and grid end: why the best config with `hparam` one grid step past that end of its valid grid
    values is no valid run (values the search skipped as invalid, such as an extension past a short run, do not
    count as the edge)."""
    integer = hparam in params.integer_hparams()

    def why_invalid(sweep: SweepResult, value: float) -> str | None:
        value = int(round(value)) if integer else value
        return invalid_reason(make_run_spec(params, str(sweep.scale["name"]), {**sweep.best, hparam: value}, None))

    blocked: dict[str, dict[str, str]] = {}
    for sweep in sweeps:
        values = [v for v in sorted(sweep.grid.get(hparam) or []) if why_invalid(sweep, v) is None]
        if len(values) < 2:
            continue
        for end, edge, neighbour in (("below", values[0], values[1]), ("above", values[-1], values[-2])):
            if reason := why_invalid(sweep, next_value_past_edge(hparam, edge, neighbour)):
                blocked.setdefault(str(sweep.scale["name"]), {})[end] = reason
    return blocked


def answer_paragraph(sensitivity: SensitivityResult, laws: ScalingLaws, costs: DecisionCosts) -> str:
    """The study's answer in one Markdown paragraph, computed from its results: what depends on scale and its
    law, what is constant and its value, how large the noise was and how it was measured, what stayed
    inconclusive and what would decide it at what cost, and the brief's hypotheses."""
    sentences = [_scale_sentence(sensitivity, laws), _constant_sentence(sensitivity), noise_sentence(sensitivity),
                 _inconclusive_sentence(sensitivity, costs), _hypotheses_sentence(sensitivity)]
    return " ".join(s for s in sentences if s)


def law_text(law: HparamLaw) -> str:
    """A fitted law with each exponent's 95% interval."""
    exponents = ", ".join(f"{name.removesuffix('_exponent')} exponent {c.estimate:.3g} "
                          f"[{c.ci95[0]:.3g}, {c.ci95[1]:.3g}]"
                          for name, c in law.coefficients.items() if name != "log_prefactor")
    return f"`{law.form}` ({exponents}; 95% intervals, {law.n_points} scales)"


def _scale_sentence(sensitivity: SensitivityResult, laws: ScalingLaws) -> str:
    verdicts = sensitivity.hyperparameters
    parts = []
    for hparam in sensitivity.sensitive:
        cause = verdicts[hparam].shift_cause
        moves = {"both": "model size and data", "model": "model size", "data": "data"}.get(cause or "", "scale")
        rule = (law_text(laws.laws[hparam]) if hparam in laws.laws
                else f"no law: {laws.unfitted.get(hparam, 'not fitted')}")
        parts.append(f"**{hparam}** is sensitive to scale, its optimum moves with {moves}: {rule}")
    text = "; ".join(parts) + "." if parts else "No hyperparameter was found sensitive to scale."
    asked = [h for h in laws.laws if h not in sensitivity.sensitive]
    if asked:
        text += " Fitted anyway (analysis.laws_for): " + "; ".join(
            f"**{h}** {law_text(laws.laws[h])}" for h in asked) + "."
    return text


def constant_text(constant: RecommendedConstant) -> str:
    """A recommended constant, with the width rule that moves it ("0.00756 at width 64 after the ... rule")."""
    value = f"{constant.value:.3g}"
    if constant.rule == "none":
        return value
    rule = constant.rule.replace("_", "-")
    return f"one value after the {rule} rule, {value} at width {constant.reference_width}"


def _constant_sentence(sensitivity: SensitivityResult) -> str:
    constant = [h for h, v in sensitivity.hyperparameters.items() if v.verdict == "insensitive"]
    if not constant:
        return "No hyperparameter was shown constant across scales."
    values = "; ".join(f"**{h}**: {constant_text(sensitivity.recommended[h])}" for h in constant)
    return f"Constant across scales (one value costs less than the threshold at every scale): {values}."


def noise_sentence(sensitivity: SensitivityResult) -> str:
    """How the verdicts' noise was measured and how large it was."""
    noise = sensitivity.noise
    source = noise.source if noise else None
    if not noise or not source:
        return "The noise was not measured: the threshold decided alone."
    measured = noise.estimates.get(source) or {}  # each source's numbers, as that estimate writes them
    if source == "seeds":
        how = (f"from seeds: {measured['configs']} configs re-run in {measured['runs']} runs ({noise.dof} degrees "
               f"of freedom), paired under common random numbers (paired std {measured['paired_std']:.3g})")
    elif source == "differences":
        how = (f"from {measured['contrasts']} differences between neighbouring grid values, no seed runs "
               f"({noise.dof} degrees of freedom)")
    else:
        how = f"as {source}"
    differences = [s.difference_std for s in noise.per_scale.values() if s.difference_std is not None]
    spread = (f", a difference between two configs by {min(differences):.3g} to {max(differences):.3g} by scale"
              if differences else "")
    scatter = 100 * (noise.relative_std or 0.0)
    return f"The noise was measured {how}: one config's loss scatters by {scatter:.3g}%{spread}."


def _inconclusive_sentence(sensitivity: SensitivityResult, costs: DecisionCosts) -> str:
    verdicts = sensitivity.hyperparameters
    inconclusive = [h for h, v in verdicts.items() if v.verdict == "inconclusive"]
    if not inconclusive:
        return "Nothing stayed inconclusive."
    best = ", ".join(f"{h} ({constant_text(sensitivity.recommended[h])})" if h in sensitivity.recommended
                     else h for h in inconclusive)
    text = [f"Inconclusive, best value so far in brackets: {best}."]
    by_remedy = {remedy: [h for h in inconclusive if what_would_decide(h, verdicts[h], costs) == remedy]
                 for remedy in (WIDER_GRID, LONGER_RUNS, MORE_OR_LONGER_RUNS)}
    if by_remedy[WIDER_GRID]:
        names = by_remedy[WIDER_GRID]
        widening = {str(costs.wider_grid[h]) for h in names if h in costs.wider_grid}
        cost = (f"for each, one more value at each end of its grid costs {widening.pop()}" if len(widening) == 1
                else "one more value at each end of its grid costs " + "; ".join(
                    f"{h}: {costs.wider_grid[h]}" for h in names if h in costs.wider_grid))
        text.append(f"For {', '.join(names)} an optimum lies at the grid edge, so a wider grid would decide "
                    f"({cost}).")
    if by_remedy[LONGER_RUNS]:
        names = by_remedy[LONGER_RUNS]
        why = "; ".join(sorted({reason for h in names for ends in costs.edge_blocked[h].values()
                                for reason in ends.values()}))
        text.append(f"For {', '.join(names)} an optimum lies at the longest value the runs allow ({why}), so only "
                    f"longer runs would decide (the phase-1 sweeps at twice the tokens cost up to "
                    f"{costs.longer_runs}).")
    if by_remedy[MORE_OR_LONGER_RUNS]:
        text.append(f"For {', '.join(by_remedy[MORE_OR_LONGER_RUNS])} the margin is within its error, so more "
                    f"seeds or longer runs would decide (one more seed on each scale's best and its competitors "
                    f"costs {costs.one_more_seed}; the phase-1 sweeps at twice the tokens cost up to "
                    f"{costs.longer_runs}).")
    return " ".join(text)


def _hypotheses_sentence(sensitivity: SensitivityResult) -> str:
    answers = sensitivity.hypotheses
    if not answers:
        return ""
    groups = [(verdict, [a.hypothesis for a in answers if a.verdict == verdict])
              for verdict in ("supported", "contradicted", "inconclusive")]
    listed = [f"{verdict}: {'; '.join(named)}" if verdict != "inconclusive" else f"{len(named)} inconclusive"
              for verdict, named in groups if named]
    return f"The brief's hypotheses ({len(answers)}): " + " · ".join(listed) + " (see the table)."
