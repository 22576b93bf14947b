"""Coordinate descent over the hyperparameter grid at one scale, as the study brief prescribes.

From the baseline, sweep one free hyperparameter over its grid with the others fixed, adopt the best value
if it beats the incumbent by more than the tolerance, go on to the next one; repeat passes until a whole
pass changes nothing (`search.stop_rule: pass`). The original study's rule is offered too
(`stop_rule: neighbourhood`): move to the best run found so far and evaluate its whole 1-D neighbourhood,
until that neighbourhood holds nothing new.

Every run goes through the run store (never trained twice) and the executor (runs of one coordinate in
parallel). All configs of a sweep share one seed (common random numbers), so loss differences come from
the hyperparameters; optional extra seeds on the final best and its closest competitors measure how big
seed noise is next to the tolerance.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError
from tqdm import tqdm

from .backends import make_executor
from .config import ALL_HPARAMS, LrTransfer, ParamsError, SearchSettings, StudyParams, round_sig
from .executor import Executor, Outcome, Task
from .provenance import provenance
from .jsonio import to_strict, write_json
from .store import RunRecord, RunStore, run_key
from .trainer import DEFAULT_TRAINER, code_identity, invalid_reason, is_diverged, make_run_spec

Config = dict[str, float | int]
INTEGER_HPARAMS = ("warmup", "batch_size")


# --- the search space: what moves, what is fixed, where it starts ---------------------------------------


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    phase: Literal["phase1", "law"]
    free: list[str]  # in the order the coordinates are visited
    grid: dict[str, list[float | int]]  # effective values of the free hyperparameters at this scale
    fixed: Config  # every other hyperparameter
    baseline: Config  # where the search starts: fixed values plus the scale's baseline for the free ones


def search_space(params: StudyParams, scale_name: str, sensitivity_path: str | None) -> SearchSpace:
    baseline, grid = params.scale_space(scale_name)
    if sensitivity_path is None:
        free = params.search_order()
        fixed = {h: v for h, v in baseline.items() if h not in free}
        return SearchSpace("phase1", free, {h: grid[h] for h in free}, fixed, baseline)
    sensitive, unjudged, recommended = _read_sensitivity(Path(sensitivity_path))
    order = params.search.order or list(grid)
    free = [h for h in order if h in sensitive]
    width = params.scale(scale_name).width
    fixed = {h: v for h, v in baseline.items() if h not in free}
    # Sensitive without a grid, or unjudged by the analysis (never swept): no constant exists, keep the baseline.
    for h in sorted(set(baseline) - set(free) - set(sensitive) - set(unjudged)):
        if h not in recommended:
            raise ParamsError(f"{sensitivity_path}: recommended: missing hyperparameter {h!r}")
    for h, entry in recommended.items():
        if h not in free:
            fixed[h] = _recommended_value(sensitivity_path, h, entry, width)
    start = {**fixed, **{h: baseline[h] for h in free}}
    try:
        params.hparams_with(start, key=f"{sensitivity_path}: recommended")
    except ValueError as error:
        raise ParamsError(str(error)) from None
    return SearchSpace("law", free, {h: grid[h] for h in free}, fixed, start)


def _read_sensitivity(path: Path) -> tuple[list[str], list[str], dict[str, Any]]:
    """The `sensitive` and (optional) `unjudged` lists and the `recommended` mapping of a sensitivity.json."""
    if not path.is_file():
        raise ParamsError(f"{path}: sensitivity file not found (run the sensitivity stage or `optsweep analyze`)")
    try:
        document = json.loads(path.read_text())
    except ValueError as error:
        raise ParamsError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise ParamsError(f"{path}: expected a JSON object with keys 'sensitive' and 'recommended'")
    sensitive, unjudged = document.get("sensitive"), document.get("unjudged", [])
    for key, names in (("sensitive", sensitive), ("unjudged", unjudged)):
        if not isinstance(names, list) or not all(isinstance(h, str) for h in names):
            raise ParamsError(f"{path}: key {key!r} must be a list of hyperparameter names")
    recommended = document.get("recommended")
    if not isinstance(recommended, dict):
        raise ParamsError(f"{path}: key 'recommended' must map hyperparameters to {{value, rule, reference_width}}")
    unknown = sorted(set(recommended) - set(ALL_HPARAMS))
    if unknown:
        raise ParamsError(f"{path}: recommended: unknown hyperparameter {unknown[0]!r}; allowed: {', '.join(ALL_HPARAMS)}")
    return sensitive, unjudged, recommended


def _recommended_value(path: str, h: str, entry: Any, width: int) -> float | int:
    """A recommended constant at this width: value x the transfer factor of its rule."""
    value = entry.get("value") if isinstance(entry, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParamsError(f"{path}: recommended.{h}.value: expected a number, got {value!r}")
    try:
        transfer = LrTransfer(rule=entry.get("rule", "none"), reference_width=entry.get("reference_width"))
    except ValidationError as error:
        first = error.errors()[0]
        raise ParamsError(f"{path}: recommended.{h}: {first['msg'].removeprefix('Value error, ')}") from None
    moved = round_sig(value * transfer.factor(width))
    return int(round(moved)) if h in INTEGER_HPARAMS else moved


# --- evaluating configs: store first, executor for the rest -----------------------------------------------


@dataclasses.dataclass
class Run:
    """One evaluated config of this sweep."""

    key: str
    hparams: Config
    seed: int
    status: Literal["ok", "diverged", "failed", "skipped"]
    loss: float | None
    reason: str | None = None
    result: dict[str, Any] | None = None
    spec: dict[str, Any] | None = None

    @property
    def rank(self) -> float:
        """What the search minimises: a run that did not finish with a loss is infinitely bad."""
        return self.loss if self.status == "ok" else math.inf

    def report(self) -> dict[str, Any]:
        row = {"key": self.key, "hparams": self.hparams, "seed": self.seed, "loss": self.loss, "status": self.status}
        if self.reason:
            row["reason"] = self.reason
        row["result"] = self.result
        return row


def _run_from_record(record: RunRecord, hparams: Config, seed: int) -> Run:
    reason = record.error.strip().splitlines()[-1] if record.error else None
    if record.status == "diverged" and record.result:
        reason = record.result.get("reason")
    return Run(record.key, hparams, seed, record.status, record.loss, reason, record.result, record.spec)


def _config_id(hparams: Config, seed: int) -> tuple:
    return tuple(sorted(hparams.items())), seed


class Progress:
    """Runs done / planned and the best loss: a tqdm bar on a terminal, plain log lines otherwise."""

    def __init__(self, label: str, enabled: bool):
        on_terminal = enabled and sys.stderr.isatty()
        self.label, self.lines = label, enabled and not on_terminal
        self.bar = tqdm(total=0, unit="run", desc=label, file=sys.stderr, dynamic_ncols=True) if on_terminal else None
        self.planned = self.done = 0

    def plan(self, to_train: int, reused: int, best: float | None) -> None:
        """Announce a batch: `to_train` runs go to the executor, `reused` came from the run store."""
        self.planned += to_train + reused
        self.done += reused
        if self.bar is not None:
            self.bar.total = self.planned
            self.bar.update(reused)
            self.bar.set_postfix_str(f"best {_loss_text(best)}")
        elif self.lines and reused:
            print(f"{self.label}: {self.done}/{self.planned} ({reused} from the run store); best {_loss_text(best)}",
                  file=sys.stderr, flush=True)

    def trained(self, run: Run, best: float | None) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"best {_loss_text(best)}")
        elif self.lines:
            values = " ".join(f"{h}={v:g}" for h, v in run.hparams.items())
            print(f"{self.label}: {self.done}/{self.planned} {run.status} loss {_loss_text(run.loss)} "
                  f"[{values}] seed {run.seed}; best {_loss_text(best)}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _loss_text(loss: float | None) -> str:
    return "-" if loss is None else f"{loss:.4f}"


class RunEvaluator:
    """Turns configs into runs: from this sweep's memory, then the run store, else trained by the executor."""

    def __init__(self, params: StudyParams, scale_name: str, data: dict[str, Any] | None, trainer_code: str,
                 store: RunStore, executor: Executor, progress: Progress):
        self.params, self.scale_name, self.data = params, scale_name, data
        self.trainer, self.trainer_code = params.study.trainer, trainer_code
        self.store, self.executor, self.progress = store, executor, progress
        self.seed = params.study.seed
        self.runs: dict[tuple, Run] = {}
        self.trained = self.reused = 0

    def known(self, hparams: Config) -> bool:
        return _config_id(hparams, self.seed) in self.runs

    def best_loss(self) -> float | None:
        finished = [run.loss for run in self.runs.values() if run.status == "ok" and run.seed == self.seed]
        return min(finished, default=None)

    def evaluate(self, configs: list[Config], seeds: list[int] | None = None) -> list[Run]:
        """Every config on every seed (default: the sweep's seed), in that order; duplicates are run once."""
        pairs = [(dict(hparams), seed) for hparams in configs for seed in (seeds or [self.seed])]
        tasks: dict[str, tuple[Config, int, dict[str, Any]]] = {}
        reused = 0
        for hparams, seed in pairs:
            if _config_id(hparams, seed) in self.runs:
                continue
            spec = make_run_spec(self.params, self.scale_name, hparams, self.data, seed=seed)
            key = run_key(spec, self.trainer, self.trainer_code)
            reason = invalid_reason(spec)
            record = None if reason else self.store.get(key)
            if reason:
                self.runs[_config_id(hparams, seed)] = Run(key, hparams, seed, "skipped", None, reason, spec=spec)
            elif record is not None:
                self.runs[_config_id(hparams, seed)] = _run_from_record(record, hparams, seed)
                reused += 1
            else:
                tasks[key] = (hparams, seed, spec)
        self.reused += reused
        self.progress.plan(len(tasks), reused, self.best_loss())
        for outcome in self.executor.run([Task(key, spec) for key, (_, _, spec) in tasks.items()]):
            hparams, seed, _ = tasks[outcome.key]
            record = self._record(outcome)
            self.store.put(outcome.key, record)
            run = _run_from_record(record, hparams, seed)
            self.runs[_config_id(hparams, seed)] = run
            self.trained += 1
            self.progress.trained(run, self.best_loss())
        return [self.runs[_config_id(hparams, seed)] for hparams, seed in pairs]

    def _record(self, outcome: Outcome) -> RunRecord:
        if outcome.error is not None:
            status, loss = "failed", None
        elif is_diverged(outcome.result):
            status, loss = "diverged", None
        else:
            status, loss = "ok", float(outcome.result["loss"])
        return RunRecord(
            key=outcome.key, status=status, loss=loss, spec=outcome.spec, trainer=self.trainer,
            trainer_code=self.trainer_code, result=outcome.result, error=outcome.error,
            attempts=outcome.attempts, wall_s=round(outcome.wall_s, 3),
        )


# --- coordinate descent ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Descent:
    best: Run
    passes: int
    converged: bool
    trajectory: list[dict[str, Any]]


def _margin(search: SearchSettings, reference: float) -> float:
    return search.tolerance if search.tolerance_kind == "absolute" else search.tolerance * abs(reference)


def _beats(challenger: Run, incumbent: Run, search: SearchSettings) -> bool:
    """Strictly better by more than the tolerance; a diverged or failed run never beats anything."""
    if math.isinf(challenger.rank) or math.isinf(incumbent.rank):
        return not math.isinf(challenger.rank)
    return challenger.rank < incumbent.rank - _margin(search, incumbent.rank)


def _step(pass_number: int, hparam: str, incumbent: Run) -> dict[str, Any]:
    return {"pass": pass_number, "hparam": hparam, "baseline": dict(incumbent.hparams), "loss": incumbent.loss}


def _descend_in_passes(space: SearchSpace, search: SearchSettings, evaluator: RunEvaluator) -> Descent:
    """Coordinate by coordinate; converged when a whole pass leaves the baseline unchanged."""
    baseline = dict(space.baseline)
    if not space.free:
        return Descent(evaluator.evaluate([baseline])[0], 0, True, [])
    trajectory = []
    for pass_number in range(1, search.passes + 1):
        changed = False
        for h in space.free:
            # The incumbent rides along with the first slice, so that it costs no batch of its own.
            incumbent, *line = evaluator.evaluate([baseline] + [{**baseline, h: v} for v in space.grid[h]])
            challenger = min(line, key=lambda run: run.rank)
            if _beats(challenger, incumbent, search):
                baseline, incumbent, changed = dict(challenger.hparams), challenger, True
            trajectory.append(_step(pass_number, h, incumbent))
        if not changed:
            return Descent(incumbent, pass_number, True, trajectory)
    return Descent(incumbent, search.passes, False, trajectory)


def _neighbourhood(space: SearchSpace, center: Config) -> list[Config]:
    return [dict(center)] + [{**center, h: v} for h in space.free for v in space.grid[h]]


def _descend_by_neighbourhood(space: SearchSpace, search: SearchSettings, evaluator: RunEvaluator) -> Descent:
    """The original study's rule: move to the best run so far; converged once its neighbourhood is all run."""
    baseline = dict(space.baseline)
    trajectory = []
    for pass_number in range(1, search.passes + 1):
        incumbent = evaluator.evaluate(_neighbourhood(space, baseline))[0]
        base_seed = [run for run in evaluator.runs.values() if run.seed == evaluator.seed]
        challenger = min(base_seed, key=lambda run: run.rank)
        if _beats(challenger, incumbent, search):
            baseline, incumbent = dict(challenger.hparams), challenger
        trajectory.append(_step(pass_number, "neighbourhood", incumbent))
        if all(evaluator.known(config) for config in _neighbourhood(space, baseline)):
            return Descent(incumbent, pass_number, True, trajectory)
    return Descent(incumbent, search.passes, False, trajectory)


# --- reporting -----------------------------------------------------------------------------------------------


def _slices(space: SearchSpace, best: Run, evaluator: RunEvaluator) -> dict[str, list[dict[str, Any]]]:
    """The 1-D line through the best along every free hyperparameter (runs any point not yet evaluated)."""
    slices = {}
    for h in space.free:
        line = evaluator.evaluate([{**best.hparams, h: v} for v in space.grid[h]])
        slices[h] = [{"value": v, "loss": run.loss, "status": run.status} for v, run in zip(space.grid[h], line)]
    return slices


def _near_best(best: Run, search: SearchSettings, evaluator: RunEvaluator) -> list[dict[str, Any]]:
    if best.status != "ok":
        return []
    limit = best.loss + _margin(search, best.loss)
    close = [run for run in evaluator.runs.values()
             if run.seed == evaluator.seed and run.status == "ok" and run.loss <= limit]
    return [{"hparams": run.hparams, "loss": run.loss} for run in sorted(close, key=lambda run: run.loss)]


def _seed_noise(best: Run, search: SearchSettings, evaluator: RunEvaluator) -> dict[str, Any] | None:
    """The best and its closest competitors on extra seeds; std pooled over configs (n - 1 weighted)."""
    if search.noise_seeds == 0 or best.status != "ok":
        return None
    competitors = sorted(
        (run for run in evaluator.runs.values()
         if run.seed == evaluator.seed and run.status == "ok" and run.hparams != best.hparams),
        key=lambda run: run.loss,
    )[: search.noise_candidates]
    configs = [best.hparams] + [run.hparams for run in competitors]
    seeds = [evaluator.seed + i for i in range(search.noise_seeds + 1)]
    runs = evaluator.evaluate(configs, seeds)
    rows, squares, degrees = [], 0.0, 0
    for i, hparams in enumerate(configs):
        losses = [run.loss for run in runs[i * len(seeds):(i + 1) * len(seeds)]]
        rows.append({"hparams": hparams, "losses": losses})
        finite = [loss for loss in losses if loss is not None]
        if len(finite) >= 2:
            mean = sum(finite) / len(finite)
            squares += sum((loss - mean) ** 2 for loss in finite)
            degrees += len(finite) - 1
    return {"seeds": seeds, "configs": rows, "std": math.sqrt(squares / degrees) if degrees else None}


def _compute(evaluator: RunEvaluator, wall_s: float) -> dict[str, Any]:
    """The cost of every run this sweep's result rests on (token budgets), and what this invocation did."""
    runs = [run for run in evaluator.runs.values() if run.status != "skipped"]
    tokens = sum(run.spec["scale"]["tokens"] for run in runs)
    flops = sum(run.spec["scale"]["tokens"] * run.spec["scale"]["flops_per_token"] for run in runs)
    return {"runs_planned": len(runs), "runs_trained": evaluator.trained, "runs_reused": evaluator.reused,
            "tokens": tokens, "flops": flops, "wall_s": round(wall_s, 3)}


# --- the sweep ------------------------------------------------------------------------------------------------


def run_sweep(params: StudyParams, scale_name: str, out_path: Path, sensitivity_path: str | None = None,
              progress: bool = True) -> dict[str, Any]:
    """Coordinate descent at one scale; writes `out_path` (strict JSON, atomically) and returns the same dict."""
    started = time.perf_counter()
    search = params.search
    space = search_space(params, scale_name, sensitivity_path)
    trainer = params.study.trainer
    trainer_code = code_identity(trainer)  # a missing trainer module fails here, before data or workers
    executor = make_executor(params.study)
    data = None
    if trainer == DEFAULT_TRAINER:
        from .data import ensure_prepared  # only the default trainer reads prepared shards

        data = ensure_prepared(params)
    label = f"sweep {scale_name}" + (" (law)" if space.phase == "law" else "")
    bar = Progress(label, progress)
    try:
        with executor:
            evaluator = RunEvaluator(params, scale_name, data, trainer_code, RunStore(params.study.store), executor, bar)
            descend = _descend_by_neighbourhood if search.stop_rule == "neighbourhood" else _descend_in_passes
            descent = descend(space, search, evaluator)
            slices = _slices(space, descent.best, evaluator)
            noise = _seed_noise(descent.best, search, evaluator)
    finally:
        bar.close()
    transfer = params.study.lr_transfer
    width = params.scale(scale_name).width
    result = to_strict({
        "scale": make_run_spec(params, scale_name, space.baseline, data)["scale"],
        "phase": space.phase,
        "free": space.free,
        "fixed": space.fixed,
        "grid": space.grid,
        "order": params.search.order or list(params.grid),
        "baseline": space.baseline,
        "best": descent.best.hparams,
        "best_loss": descent.best.loss,
        "near_best": _near_best(descent.best, search, evaluator),
        "passes": descent.passes,
        "converged": descent.converged,
        "stop_rule": search.stop_rule,
        "tolerance": search.tolerance,
        "tolerance_kind": search.tolerance_kind,
        "trajectory": descent.trajectory,
        "runs": [run.report() for run in evaluator.runs.values()],
        "slices": slices,
        "noise": noise,
        "compute": _compute(evaluator, time.perf_counter() - started),
        "provenance": provenance(
            params.params_hash(),
            data_hash=data.get("hash") if data else None,
            trainer=trainer,
            trainer_code=trainer_code,
            seed=params.study.seed,
            lr_transfer={"rule": transfer.rule, "reference_width": transfer.reference_width,
                         "factor": transfer.factor(width)},
        ),
    })
    write_json(Path(out_path), result)
    return result
