"""The study's results as tables for the notebooks and the HTML report: everything is read from results/."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pandas.io.formats.style import Styler

from .analysis import predict
from .analysis.speedup import Interval, SpeedupResult
from .analysis.table import hparam_names
from .config import StudyParams, load_params
from .documents import require_one_identity
from .jsonio import read_json
from .paths import SWEEP_FOLDERS, ProjectPaths, enter_root
from .presets import ASSUMED_MFU, planned_runs, scale_plans
from .search import next_value_past_edge
from .trainer_plugin import invalid_reason, make_run_spec

RESULTS = Path("results")

# The original study's reported optimum (reference/study-brief.md, "Results"), shown beside ours for
# comparison. lr is stated at width 512, so it is compared as lr x width.
BRIEF_REPORTED: dict[str, str] = {
    "lr": "1.6e-2 at width 512 (lr x width = 8.2)",
    "min_lr_ratio": "0",
    "warmup": "2000 steps",
    "beta1": "0.9",
    "beta2": "0.95",
    "weight_decay": "0.1",
    "eps": "1e-15",
    "clip": "1.0",
    "batch_size": "-",
}


def optimizer_study(optimizer: str = "", params_file: str = "") -> tuple[ProjectPaths, StudyParams]:
    """The paths and params of one optimizer's study ("": the study's own; else a key of params
    `optimizers`), after entering the project root. A notebook's `optimizer` parameter comes here."""
    paths = enter_root()
    params = load_params(params_file or paths.params)
    if not optimizer:
        return paths, params
    return paths.of_optimizer(optimizer), params.for_optimizer(optimizer)


def study_sweeps(paths: ProjectPaths, params: StudyParams) -> list[dict[str, Any]]:
    """One optimizer's sweep results of both phases (see `load_sweeps`), phase 1 first."""
    return load_sweeps(paths.sweeps("phase1"), list(params.scales)) + load_sweeps(
        paths.sweeps("law"), list(params.law_scales)
    )


def load_sweeps(folder: Path, names: list[str]) -> list[dict[str, Any]]:
    """The sweep results of the named scales (files of scales not in the params are ignored), checked to share
    one data hash and trainer identity."""
    sweeps = [read_json(folder / f"{name}.json") for name in names if (folder / f"{name}.json").is_file()]
    require_one_identity(sweeps)
    return sweeps


def slices_frame(sweeps: list[dict[str, Any]]) -> pd.DataFrame:
    """Long table of each sweep's final 1-D slices: scale, hparam, value, loss, status, delta to the best."""
    rows = []
    for sweep in sweeps:
        for hparam, points in sweep["slices"].items():
            for point in points:
                rows.append({"scale": sweep["scale"]["name"], "hparam": hparam, **point})
    frame = pd.DataFrame(rows, columns=["scale", "hparam", "value", "loss", "status"])
    frame["loss"] = pd.to_numeric(frame["loss"])
    best = {sweep["scale"]["name"]: sweep["best_loss"] for sweep in sweeps}
    frame["delta_loss"] = frame["loss"] - frame["scale"].map(best)
    return frame


def sweep_summary_frame(sweeps: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per swept scale: size, budget, best loss, runs, convergence."""
    return pd.DataFrame(
        [
            {
                "scale": s["scale"]["name"],
                "phase": s["phase"],
                "width": s["scale"]["width"],
                "depth": s["scale"]["depth"],
                "N (non-emb.)": s["scale"]["n_params"],
                "D (tokens)": s["scale"]["tokens"],
                "steps": s["scale"]["steps"],
                "free": ", ".join(s["free"]),
                "runs": len([r for r in s["runs"] if r["status"] != "skipped"]),
                "passes": s["passes"],
                "converged": s["converged"],
                "best loss": s["best_loss"],
            }
            for s in sweeps
        ]
    )


def compute_summary(sweeps: list[dict[str, Any]]) -> dict[str, str]:
    """Distinct trained runs and their compute over all sweeps (a run shared by two sweeps counts once)."""
    runs = {r["key"]: r for s in sweeps for r in s["runs"] if r["status"] in ("ok", "diverged")}
    results = [r.get("result") or {} for r in runs.values()]
    return {
        "runs trained": f"{len(runs)}",
        "of which diverged": f"{sum(r['status'] == 'diverged' for r in runs.values())}",
        "tokens": f"{sum(x.get('tokens', 0) for x in results):.3g}",
        "training FLOPs": f"{sum(x.get('flops', 0) for x in results):.3g}",
        "run time, summed over workers": f"{sum(x.get('wall_s', 0) for x in results) / 60:.1f} min",
    }


def recommended_frame(sensitivity: dict[str, Any], laws: dict[str, Any]) -> pd.DataFrame:
    """Our recommendation per hyperparameter (a fitted law or a constant) next to the brief's values."""
    rows = []
    for hparam, verdict in sensitivity["hyperparameters"].items():
        if hparam in laws.get("laws", {}):
            ours = laws["laws"][hparam]["form"]
        elif hparam in sensitivity.get("recommended", {}):
            rec = sensitivity["recommended"][hparam]
            ours = f"{rec['value']:.3g}"
            if rec.get("rule", "none") != "none":
                ours += f" at width {rec['reference_width']} ({rec['rule'].replace('_', ' ')})"
        else:
            ours = "-"
        rows.append(
            {
                "hyperparameter": hparam,
                "verdict": verdict.get("verdict", "sensitive" if verdict["sensitive"] else "insensitive"),
                "recommended (this study)": ours,
                "original study (brief)": BRIEF_REPORTED.get(hparam, "-"),
                "reason": short_reason(hparam, verdict),
            }
        )
    order = {h: i for i, h in enumerate(hparam_names())}
    return pd.DataFrame(rows).sort_values("hyperparameter", key=lambda s: s.map(order)).reset_index(drop=True)


def provenance_frame(params: StudyParams, sweeps: list[dict[str, Any]]) -> pd.DataFrame:
    """Preset, params hash, data hash, code version and dates, as recorded by the sweeps themselves."""
    recorded = [s["provenance"] for s in sweeps]
    values = {
        "preset": params.study.name,
        "params hash (now)": params.params_hash(),
        "params hash (sweeps)": ", ".join(sorted({p.get("params_hash", "?") for p in recorded})),
        "data hash": ", ".join(sorted({str(p.get("data_hash")) for p in recorded})),
        "trainer": ", ".join(sorted({str(p.get("trainer")) for p in recorded})),
        "code version": ", ".join(sorted({p.get("code_version", "?") for p in recorded})),
        "seed": ", ".join(sorted({str(p.get("seed")) for p in recorded})),
        "sweeps run": f"{min(p['created'] for p in recorded)} .. {max(p['created'] for p in recorded)}",
    }
    return pd.DataFrame({"": list(values), "value": list(values.values())})


def sensitivity_frame(sensitivity: dict[str, Any]) -> pd.DataFrame:
    """One row per hyperparameter: the verdict with its margin and the noise it was judged against, both
    standards, the cause, whether the original study's rule finds it stable, and the short reason (the full
    one, and why the original rule differs, are in `reasons_details`)."""
    return pd.DataFrame(
        [
            {"hyperparameter": h, "verdict": v["verdict"], "margin": v["margin"],
             "p (Holm)": v.get("p_holm"), "noise of a difference": v["noise"],
             "loss sensitive": v["loss_sensitive"], "optimum shifts": v["optimum_shifts"],
             "shift cause": v["shift_cause"], "original rule: stable": v["original_rule"]["stable"],
             "reason": short_reason(h, v)}
            for h, v in sensitivity["hyperparameters"].items()
        ]
    )


def reasons_details(sensitivity: dict[str, Any]) -> str:
    """Every verdict's full reason, and why the original study's rule differs where it does, as a collapsed
    HTML <details> block: the tables show only the short clause."""
    items = []
    for hparam, verdict in sensitivity["hyperparameters"].items():
        differs = (verdict.get("original_rule") or {}).get("why_differs")
        text = verdict["reason"] + (f" Original rule: {differs}." if differs else "")
        items.append(f"<li>{html.escape(text)}</li>")
    return f"<details><summary>Full reasons</summary><ul>{''.join(items)}</ul></details>"


def noise_frame(sensitivity: dict[str, Any]) -> pd.DataFrame:
    """Per scale: the noise the verdicts were judged against, its source, the threshold, and how many runs the
    divergence rule marked."""
    noise, thresholds = sensitivity["noise"], sensitivity["threshold"]["per_scale"]
    return pd.DataFrame(
        [
            {"scale": scale, "best loss": info["best_loss"], "runs": info["runs"],
             "blown up (marked diverged)": sensitivity["blown_up"]["per_scale"].get(scale, 0),
             "noise of one config": noise["per_scale"][scale]["config_std"],
             "noise of a difference": noise["per_scale"][scale]["difference_std"],
             "noise source": noise.get("source", "seeds"), "threshold": thresholds[scale]}
            for scale, info in sensitivity["scales"].items()
        ]
    )


def analysis_warnings(sensitivity: dict[str, Any], laws: dict[str, Any] | None = None) -> str:
    """Which noise the verdicts were judged against, then the analysis' warnings, as a Markdown list ("" when
    there is neither), for the top of a report."""
    found = [*sensitivity.get("warnings", []), *((laws or {}).get("warnings", []))]
    noise = sensitivity.get("noise") or {}
    source = [f"- noise source: **{noise['source']}** ({noise['relative_std']:.3%} of the loss per config)"
              ] if noise.get("source") else []
    return "\n".join([*source, *(f"- **warning**: {w}" for w in found)])


def law_forms_frame(law: dict[str, Any]) -> pd.DataFrame:
    """Each law form that was fitted, with its leave-one-out error; the chosen one marked."""
    return pd.DataFrame(
        [{"form": k, "law": f["form"], "leave-one-out RMSE (log)": f["loo_rmse"], "chosen": k == law["kind"]}
         for k, f in law.get("forms", {}).items()]
    )


def hypotheses_frame(sensitivity: dict[str, Any]) -> pd.DataFrame:
    """The brief's conjectures with our verdict, the reason, and the key numbers behind it as short text."""
    rows = []
    for answer in sensitivity["hypotheses"]:
        evidence = dict(answer["evidence"])
        why = evidence.pop("why", "")
        rows.append({"hypothesis": answer["hypothesis"], "verdict": answer["verdict"],
                     "sensitivity verdict": answer.get("sensitivity_verdict") or "-", "why": why,
                     "numbers": evidence_text(evidence)})
    return pd.DataFrame(rows, columns=["hypothesis", "verdict", "sensitivity verdict", "why", "numbers"])


# Evidence the hypotheses table leaves out: the full sensitivity reason and the thresholds (both in the
# sensitivity tables) and the sensitivity verdict (its own column).
EVIDENCE_LEFT_OUT = frozenset({"reason", "thresholds", "threshold", "sensitivity"})


def evidence_text(evidence: dict[str, Any]) -> str:
    """The numbers behind a hypothesis as short text: numbers to 3 significant digits, a mapping per scale or
    rule as "name value" pairs, a pair of scales as "shorter -> longer (numbers)"."""
    return "; ".join(f"{_label(key)}: {_value_text(value)}" for key, value in evidence.items()
                     if key not in EVIDENCE_LEFT_OUT and value not in (None, "", [], {}))


def _label(key: str) -> str:
    return key.replace("_", " ")


def _value_text(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, (int, float)):
        return f"{value:.3g}"
    if isinstance(value, str):
        return _label(value)
    if isinstance(value, dict):
        names = [str(v) for k, v in value.items() if isinstance(v, str) and k not in EVIDENCE_LEFT_OUT]
        numbers = ", ".join(f"{_label(k)} {_value_text(v)}" for k, v in value.items()
                            if not isinstance(v, str) and k not in EVIDENCE_LEFT_OUT)
        return f"{' -> '.join(names)} ({numbers})" if names else numbers
    return "; ".join(_value_text(item) for item in value)


def styled(frame: pd.DataFrame, digits: int = 4) -> Styler:
    """A table for the HTML report: no index column, floats to `digits` significant digits, text left-aligned
    (a right-aligned sentence is hard to read)."""
    floats = {c: f"{{:.{digits}g}}" for c in frame.columns if pd.api.types.is_float_dtype(frame[c])}
    text = [c for c in frame.columns if pd.api.types.is_string_dtype(frame[c])]
    table = frame.style.hide(axis="index").format(floats, na_rep="-")
    return table.set_properties(subset=text, **{"text-align": "left"})


def law_curves(laws: dict[str, Any], hparam: str, samples: int = 30) -> pd.DataFrame:
    """The fitted law for `hparam` with its 95% interval, along N at each token budget it was fitted on
    (`along` "N") and along D at each model size (`along` "D"), from 1/1.5 of the smallest to 1.5 x the
    largest fitted value."""
    points = pd.DataFrame(laws["laws"][hparam]["points"])
    width = int(points["width"].median())  # only constants with a width rule read it

    def spread(column: str) -> np.ndarray:
        return np.geomspace(points[column].min() / 1.5, points[column].max() * 1.5, samples)

    rows = []
    for along, moving, fixed in (("N", "n_params", "tokens"), ("D", "tokens", "n_params")):
        for held in sorted(points[fixed].unique()):
            for value in spread(moving):
                at = {moving: value, fixed: held}
                prediction = predict(laws, n_params=at["n_params"], tokens=at["tokens"], width=width)
                lower, upper = prediction["intervals"][hparam]
                rows.append({"along": along, "tokens": at["tokens"], "n_params": at["n_params"],
                             "estimate": prediction["hparams"][hparam], "lower": lower, "upper": upper})
    return pd.DataFrame(rows)


# --- the answer at the top of the report -------------------------------------------------------------------

# What would turn an inconclusive verdict into a conclusive one.
WIDER_GRID, LONGER_RUNS, MORE_OR_LONGER_RUNS = "a wider grid", "longer runs", "more seeds or longer runs"


def verdict_clause(hparam: str, reason: str) -> str:
    """The verdict clause of a sensitivity reason: "lr: not sensitive, one value serves every scale: numbers"
    -> "not sensitive, one value serves every scale"."""
    return reason.removeprefix(f"{hparam}: ").split(":", 1)[0].strip().rstrip(".")


def grid_edges(verdict: dict[str, Any]) -> list[str]:
    """The scales whose optimum lies at the grid edge (a bound: the true optimum is beyond it)."""
    return list((verdict.get("evidence") or {}).get("at_edge") or [])


def short_reason(hparam: str, verdict: dict[str, Any]) -> str:
    """A verdict's reason for a table: its clause, and the scales whose optimum lies at the grid edge."""
    edges = grid_edges(verdict)
    return verdict_clause(hparam, verdict.get("reason", "")) + (f"; at the grid edge at {', '.join(edges)}"
                                                                 if edges else "")


def what_would_decide(hparam: str, verdict: dict[str, Any], costs: DecisionCosts) -> str:
    """For an inconclusive verdict: a wider grid when an optimum lies at a grid edge that can grow (its true value
    is beyond it), longer runs when every such edge is the longest the runs allow (warmup at a short run's
    length), else more seeds or longer runs (the margin is within its error)."""
    edges = grid_edges(verdict)
    if not edges:
        return MORE_OR_LONGER_RUNS
    blocked = costs.edge_blocked.get(hparam, {})
    optima = verdict.get("optimum") or {}
    if all((optima.get(scale) or {}).get("edge") in blocked.get(scale, {}) for scale in edges):
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


def decision_costs(params: StudyParams, sweeps: list[dict[str, Any]]) -> DecisionCosts:
    """The costs of `DecisionCosts`: run counts from the planner (`optsweep plan`'s `planned_runs`, as the
    difference between the study and the study changed that way), GPU-hours per run from the planner, wall time
    per run as measured."""
    phase1 = [s for s in sweeps if s["phase"] == "phase1"]
    seconds_per_run = {s["scale"]["name"]: _measured_run_seconds(s) for s in phase1}
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


def _measured_run_seconds(sweep: dict[str, Any]) -> float:
    """Mean wall seconds of one of the sweep's finished runs."""
    results = [run.get("result") or {} for run in sweep["runs"] if run["status"] in ("ok", "diverged")]
    return sum(r.get("wall_s", 0.0) for r in results) / len(results) if results else 0.0


def _widened(hparam: str, values: list[float | int]) -> list[float | int]:
    """The grid with one more value at each end, as the search grows a grid past an edge."""
    ordered = sorted(values)
    if len(ordered) < 2:
        return ordered
    return [next_value_past_edge(hparam, ordered[0], ordered[1]), *ordered,
            next_value_past_edge(hparam, ordered[-1], ordered[-2])]


def _edge_blocked(params: StudyParams, sweeps: list[dict[str, Any]], hparam: str) -> dict[str, dict[str, str]]:
    """Per scale and grid end: why the best config with `hparam` one grid step past that end of its valid grid
    values is no valid run (values the search skipped as invalid, such as an extension past a short run, do not
    count as the edge)."""
    integer = hparam in params.integer_hparams()

    def why_invalid(sweep: dict[str, Any], value: float) -> str | None:
        value = int(round(value)) if integer else value
        return invalid_reason(make_run_spec(params, sweep["scale"]["name"], {**sweep["best"], hparam: value}, None))

    blocked: dict[str, dict[str, str]] = {}
    for sweep in sweeps:
        values = [v for v in sorted(sweep["grid"].get(hparam) or []) if why_invalid(sweep, v) is None]
        if len(values) < 2:
            continue
        for end, edge, neighbour in (("below", values[0], values[1]), ("above", values[-1], values[-2])):
            if reason := why_invalid(sweep, next_value_past_edge(hparam, edge, neighbour)):
                blocked.setdefault(sweep["scale"]["name"], {})[end] = reason
    return blocked


def answer_paragraph(sensitivity: dict[str, Any], laws: dict[str, Any], costs: DecisionCosts) -> str:
    """The study's answer in one Markdown paragraph, computed from its results: what depends on scale and its
    law, what is constant and its value, how large the noise was and how it was measured, what stayed
    inconclusive and what would decide it at what cost, and the brief's hypotheses."""
    sentences = [_scale_sentence(sensitivity, laws), _constant_sentence(sensitivity), noise_sentence(sensitivity),
                 _inconclusive_sentence(sensitivity, costs), _hypotheses_sentence(sensitivity)]
    return " ".join(s for s in sentences if s)


def law_text(law: dict[str, Any]) -> str:
    """A fitted law with each exponent's 95% interval."""
    exponents = ", ".join(f"{name.removesuffix('_exponent')} exponent {c['estimate']:.3g} "
                          f"[{c['ci95'][0]:.3g}, {c['ci95'][1]:.3g}]"
                          for name, c in law["coefficients"].items() if name != "log_prefactor")
    return f"`{law['form']}` ({exponents}; 95% intervals, {law['n_points']} scales)"


def _scale_sentence(sensitivity: dict[str, Any], laws: dict[str, Any]) -> str:
    verdicts = sensitivity["hyperparameters"]
    parts = []
    for hparam in sensitivity["sensitive"]:
        cause = verdicts[hparam]["shift_cause"]
        moves = {"both": "model size and data", "model": "model size", "data": "data"}.get(cause, "scale")
        rule = (law_text(laws["laws"][hparam]) if hparam in laws["laws"]
                else f"no law: {laws['unfitted'].get(hparam, 'not fitted')}")
        parts.append(f"**{hparam}** is sensitive to scale, its optimum moves with {moves}: {rule}")
    text = "; ".join(parts) + "." if parts else "No hyperparameter was found sensitive to scale."
    asked = [h for h, law in laws["laws"].items() if h not in sensitivity["sensitive"]]
    if asked:
        text += " Fitted anyway (analysis.laws_for): " + "; ".join(
            f"**{h}** {law_text(laws['laws'][h])}" for h in asked) + "."
    return text


def constant_text(constant: dict[str, Any]) -> str:
    """A recommended constant, with the width rule that moves it ("0.00756 at width 64 after the ... rule")."""
    value = f"{constant['value']:.3g}"
    if constant.get("rule", "none") == "none":
        return value
    rule = constant["rule"].replace("_", "-")
    return f"one value after the {rule} rule, {value} at width {constant['reference_width']}"


def _constant_sentence(sensitivity: dict[str, Any]) -> str:
    constant = [h for h, v in sensitivity["hyperparameters"].items() if v["verdict"] == "insensitive"]
    if not constant:
        return "No hyperparameter was shown constant across scales."
    values = "; ".join(f"**{h}**: {constant_text(sensitivity['recommended'][h])}" for h in constant)
    return f"Constant across scales (one value costs less than the threshold at every scale): {values}."


def noise_sentence(sensitivity: dict[str, Any]) -> str:
    """How the verdicts' noise was measured and how large it was."""
    noise = sensitivity.get("noise") or {}
    source = noise.get("source")
    if not source:
        return "The noise was not measured: the threshold decided alone."
    measured = (noise.get("estimates") or {}).get(source) or {}
    if source == "seeds":
        how = (f"from seeds: {measured['configs']} configs re-run in {measured['runs']} runs ({noise['dof']} degrees "
               f"of freedom), paired under common random numbers (paired std {measured['paired_std']:.3g})")
    elif source == "differences":
        how = (f"from {measured['contrasts']} differences between neighbouring grid values, no seed runs "
               f"({noise['dof']} degrees of freedom)")
    else:
        how = f"as {source}"
    differences = [s["difference_std"] for s in noise.get("per_scale", {}).values()]
    spread = (f", a difference between two configs by {min(differences):.3g} to {max(differences):.3g} by scale"
              if differences else "")
    return f"The noise was measured {how}: one config's loss scatters by {100 * noise['relative_std']:.3g}%{spread}."


def _inconclusive_sentence(sensitivity: dict[str, Any], costs: DecisionCosts) -> str:
    verdicts = sensitivity["hyperparameters"]
    inconclusive = [h for h, v in verdicts.items() if v["verdict"] == "inconclusive"]
    if not inconclusive:
        return "Nothing stayed inconclusive."
    best = ", ".join(f"{h} ({constant_text(sensitivity['recommended'][h])})" if h in sensitivity["recommended"]
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


def _hypotheses_sentence(sensitivity: dict[str, Any]) -> str:
    answers = sensitivity.get("hypotheses") or []
    if not answers:
        return ""
    groups = [(verdict, [a["hypothesis"] for a in answers if a["verdict"] == verdict])
              for verdict in ("supported", "contradicted", "inconclusive")]
    listed = [f"{verdict}: {'; '.join(named)}" if verdict != "inconclusive" else f"{len(named)} inconclusive"
              for verdict, named in groups if named]
    return f"The brief's hypotheses ({len(answers)}): " + " · ".join(listed) + " (see the table)."


# --- other optimizers against the tuned AdamW (params `optimizers`, results/speedup.json) ------------------


@dataclass(frozen=True)
class Comparison:
    """The other optimizers' studies next to the reference's (the tuned AdamW) and their speedups over it."""

    speedup: SpeedupResult
    sweeps: dict[str, list[dict[str, Any]]]  # optimizer -> its sweeps of both phases; the reference first
    paths: dict[str, ProjectPaths]  # optimizer -> where its results and reports live

    @property
    def others(self) -> list[str]:
        return [name for name in self.sweeps if name != self.speedup.reference]

    def every_sweep(self) -> list[dict[str, Any]]:
        return [sweep for sweeps in self.sweeps.values() for sweep in sweeps]


def load_comparison(paths: ProjectPaths, params: StudyParams, own_sweeps: list[dict[str, Any]]) -> Comparison | None:
    """The comparison when the params name other optimizers and results/speedup.json exists, else None."""
    if not params.optimizers or not paths.speedup.is_file():
        return None
    speedup = SpeedupResult.read(paths.speedup)
    theirs = {name: paths.of_optimizer(name) for name in params.optimizers}
    return Comparison(
        speedup=speedup,
        sweeps={speedup.reference: own_sweeps, **{name: study_sweeps(p, params) for name, p in theirs.items()}},
        paths={speedup.reference: paths, **theirs},
    )


SCALE_ROW = ("phase", "scale", "N (non-emb.)", "D (tokens)")


def _scale_row(sweep: dict[str, Any]) -> dict[str, Any]:
    scale = sweep["scale"]
    return {"phase": sweep["phase"], "scale": scale["name"], "N (non-emb.)": scale["n_params"],
            "D (tokens)": scale["tokens"]}


def tuned_loss_frame(comparison: Comparison) -> pd.DataFrame:
    """One row per scale, one column per optimizer: its tuned (best) held-out loss there ("-": not swept, or
    every run diverged)."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for optimizer, sweeps in comparison.sweeps.items():
        for sweep in sweeps:
            rows.setdefault((sweep["phase"], sweep["scale"]["name"]), _scale_row(sweep))[optimizer] = sweep["best_loss"]
    frame = pd.DataFrame(list(rows.values()), columns=[*SCALE_ROW, *comparison.sweeps])
    return frame.astype({name: float for name in comparison.sweeps})


def tuned_hparams_frame(comparison: Comparison) -> pd.DataFrame:
    """Each optimizer's tuned hyperparameters side by side: one row per (scale, hyperparameter), one column
    per optimizer; a name an optimizer does not have is left empty."""
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for optimizer, sweeps in comparison.sweeps.items():
        for sweep in sweeps:
            for hparam, value in sweep["best"].items():
                key = (sweep["phase"], sweep["scale"]["name"], hparam)
                rows.setdefault(key, {"phase": key[0], "scale": key[1], "hyperparameter": hparam})[optimizer] = value
    scales = list(dict.fromkeys(key[:2] for key in rows))
    hparams = list(dict.fromkeys(key[2] for key in rows))  # each in one place at every scale
    ordered = sorted(rows, key=lambda key: (scales.index(key[:2]), hparams.index(key[2])))
    frame = pd.DataFrame([rows[key] for key in ordered], columns=["phase", "scale", "hyperparameter",
                                                                   *comparison.sweeps])
    return frame.astype({name: float for name in comparison.sweeps})


def interval_text(interval: Interval) -> str:
    """[low, high] to 3 significant digits; an upper bound AdamW's curve never reaches is unbounded."""
    low, high = interval
    if low is None and high is None:
        return "-"
    return f"[{'-' if low is None else f'{low:.3g}'}, {'unbounded' if high is None else f'{high:.3g}'}]"


def speedup_frame(result: SpeedupResult) -> pd.DataFrame:
    """One row per (optimizer, scale): its tuned loss, the data AdamW needs to reach it (D_eff), the speedup
    D_eff / D with its interval, and whether D_eff was extrapolated beyond AdamW's fitted data range."""
    reference = result.reference
    return pd.DataFrame(
        [
            {"optimizer": s.optimizer, "scale": s.scale, "N (non-emb.)": s.n_params, "D (tokens)": s.tokens,
             "tuned loss": s.loss, f"{reference} loss": s.reference_loss, "D_eff (tokens)": s.effective_tokens,
             "speedup": s.speedup, f"{result.level:.0%} interval": interval_text(s.interval),
             "extrapolated": s.extrapolated, "noise": s.noise,
             "note": "" if s.speedup is not None else f"below {reference}'s asymptote c: no D_eff reaches it"}
            for s in result.speedups
        ],
        columns=["optimizer", "scale", "N (non-emb.)", "D (tokens)", "tuned loss", f"{reference} loss",
                 "D_eff (tokens)", "speedup", f"{result.level:.0%} interval", "extrapolated", "noise", "note"],
    ).astype({"D_eff (tokens)": float, "speedup": float, f"{reference} loss": float, "noise": float})


def speedup_points(result: SpeedupResult) -> pd.DataFrame:
    """The speedups as numbers for a figure: optimizer, n_params, tokens, speedup, low, high (NaN: unbounded),
    extrapolated; scales without a D_eff are left out (they have no speedup to draw)."""
    frame = pd.DataFrame(
        [{"optimizer": s.optimizer, "scale": s.scale, "n_params": s.n_params, "tokens": s.tokens,
          "speedup": s.speedup, "low": s.interval[0], "high": s.interval[1], "extrapolated": s.extrapolated}
         for s in result.speedups if s.speedup is not None],
        columns=["optimizer", "scale", "n_params", "tokens", "speedup", "low", "high", "extrapolated"],
    )
    return frame.astype({"speedup": float, "low": float, "high": float})


def reference_curve_lines(result: SpeedupResult, samples: int = 40) -> pd.DataFrame:
    """The reference's fitted L(D) per model size along D, from half its smallest to twice its largest data
    scale (and as far as any speedup's D_eff), and its asymptote c, for `plots.reference_curves`."""
    rows = []
    for curve in result.curves:
        reached = [s.effective_tokens for s in result.speedups if s.n_params == curve.n_params and s.effective_tokens]
        tokens = np.geomspace(min(curve.tokens) / 2, max([max(curve.tokens) * 2, *reached]), samples)
        rows += [{"n_params": curve.n_params, "tokens": d, "loss": curve.a * d**-curve.b + curve.c, "c": curve.c}
                 for d in tokens]
    return pd.DataFrame(rows)


def tuned_points(result: SpeedupResult) -> pd.DataFrame:
    """Every optimizer's tuned loss at each scale the speedup analysis used (the reference's first)."""
    rows = [{"optimizer": result.reference, "n_params": c.n_params, "tokens": d, "loss": loss}
            for c in result.curves for d, loss in zip(c.tokens, c.losses)]
    rows += [{"optimizer": s.optimizer, "n_params": s.n_params, "tokens": s.tokens, "loss": s.loss}
             for s in result.speedups]
    return pd.DataFrame(rows)


def reference_curves_frame(result: SpeedupResult) -> pd.DataFrame:
    """The reference's fitted L(D) = a D^-b + c per model size, each coefficient with its interval."""
    level = f"{result.level:.0%} interval"
    return pd.DataFrame(
        [
            {"N (non-emb.)": c.n_params, "L(D)": f"{c.a:.3g} D^-{c.b:.3g} + {c.c:.3g}",
             "data scales (tokens)": ", ".join(f"{t:.3g}" for t in c.tokens),
             "a": c.a, f"a {level}": interval_text(c.a_interval), "b": c.b, f"b {level}": interval_text(c.b_interval),
             "c": c.c, f"c {level}": interval_text(c.c_interval), "residual SE": c.residual_se, "noise used": c.noise}
            for c in result.curves
        ]
    ).astype({"residual SE": float})


def speedup_verdicts_frame(result: SpeedupResult) -> pd.DataFrame:
    """The talk's claims as hypotheses, one row per (claim, optimizer): verdict, margin, estimate, interval."""
    return pd.DataFrame(
        [{"hypothesis": v.hypothesis, "optimizer": v.optimizer, "verdict": v.verdict, "margin": v.margin,
          "estimate": v.estimate, f"{result.level:.0%} interval": interval_text(v.interval), "why": v.why}
         for v in result.hypotheses],
        columns=["hypothesis", "optimizer", "verdict", "margin", "estimate", f"{result.level:.0%} interval", "why"],
    ).astype({"margin": float, "estimate": float})


def transfer_frame(comparison: Comparison) -> pd.DataFrame:
    """Each sweep's transferred optimum: the reference's best carried to this optimizer where the names match,
    its loss next to this optimizer's tuned loss (a positive cost: the optimum did not transfer)."""
    rows = []
    for optimizer in comparison.others:
        for sweep in comparison.sweeps[optimizer]:
            transfer = sweep.get("transfer")
            if transfer:
                loss, tuned = transfer["loss"], transfer["tuned_loss"]
                rows.append({"optimizer": optimizer, "phase": sweep["phase"], "scale": sweep["scale"]["name"],
                             "carried from": transfer["source"], "carried": ", ".join(transfer["carried"]),
                             "status": transfer["status"], "loss with the carried values": loss, "tuned loss": tuned,
                             "cost of carrying": None if loss is None or tuned is None else loss - tuned})
    columns = ["optimizer", "phase", "scale", "carried from", "carried", "status", "loss with the carried values",
               "tuned loss", "cost of carrying"]
    return pd.DataFrame(rows, columns=columns).astype({c: float for c in columns[-3:]})


def optimizer_pages(comparison: Comparison, optimizer: str, reports: Path) -> str:
    """Markdown links (relative to `reports`, the report's folder) to the optimizer's HTML pages that exist."""
    own = comparison.paths[optimizer].reports
    pages = [("sensitivity", own / "sensitivity.html"), ("scaling laws", own / "scaling_law.html")]
    pages += [(f"{sweep['scale']['name']} ({sweep['phase']})", own / SWEEP_FOLDERS[sweep["phase"]] /
               f"{sweep['scale']['name']}.html") for sweep in comparison.sweeps[optimizer]]
    links = [f"[{title}]({page.relative_to(reports).as_posix()})" for title, page in pages if page.is_file()]
    return f"**{optimizer}**: " + (" · ".join(links) if links else "no pages yet")
