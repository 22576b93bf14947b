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

import contextlib
import dataclasses
import json
import math
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

from pydantic import ValidationError
from tqdm import tqdm

from .axes import axis_of
from .backends import make_executor
from .config import LrTransfer, ParamsError, SearchSettings, StudyParams, round_sig
from .documents import (
    SweepResult,
    as_json,
    beats_under_common_seeds,
    read_document,
    tolerance_margin,
    write_document,
)
from .executor import Executor, Outcome, Task, TaskInbox
from .jsonio import to_strict
from .optimizers import load_optimizer
from .provenance import provenance
from .store import CLAIM_HEARTBEAT_S, RunClaims, RunRecord, RunStatus, RunStore, run_key
from .trainer_plugin import DEFAULT_TRAINER, code_identity, invalid_reason, is_diverged, make_run_spec

Config = dict[str, float | int]
CLAIM_POLL_S = 1.0  # how often a driver looks for runs that another driver has claimed


class FailedRuns(RuntimeError):
    """A sweep ended with runs that failed: its result file lists them, but it is not a finished search."""


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
    sensitive, unjudged, recommended = _read_sensitivity(Path(sensitivity_path), params.hparam_names())
    # A law asked for under analysis.laws_for needs its optimum measured at the law scales too.
    free = [h for h in params.coordinate_order() if h in sensitive or h in params.analysis.laws_for]
    width = params.scale(scale_name).width
    integers = params.integer_hparams()
    fixed = {h: v for h, v in baseline.items() if h not in free}
    # Sensitive without a grid, or unjudged by the analysis (never swept): no constant exists, keep the baseline.
    for h in sorted(set(baseline) - set(free) - set(sensitive) - set(unjudged)):
        if h not in recommended:
            raise ParamsError(f"{sensitivity_path}: recommended: missing hyperparameter {h!r}")
    for h, entry in recommended.items():
        if h not in free:
            fixed[h] = _recommended_value(sensitivity_path, h, entry, width, h in integers)
    start = {**fixed, **{h: baseline[h] for h in free}}
    params.hparams_with(start, key=f"{sensitivity_path}: recommended")
    return SearchSpace("law", free, {h: grid[h] for h in free}, fixed, start)


def _read_sensitivity(path: Path, hparams: list[str]) -> tuple[list[str], list[str], dict[str, Any]]:
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
    unknown = sorted(set(recommended) - set(hparams))
    if unknown:
        raise ParamsError(f"{path}: recommended: unknown hyperparameter {unknown[0]!r}; allowed: {', '.join(hparams)}")
    return sensitive, unjudged, recommended


def _recommended_value(path: str, h: str, entry: Any, width: int, integer: bool) -> float | int:
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
    return int(round(moved)) if integer else moved


# --- evaluating configs: store first, executor for the rest -----------------------------------------------


@dataclasses.dataclass
class EvaluatedRun:
    """One evaluated config of this sweep."""

    key: str
    hparams: Config
    seed: int  # the replicate: the sweep's seed, or a noise seed (see `RunEvaluator.spec`)
    status: RunStatus
    loss: float | None
    reason: str | None = None
    result: dict[str, Any] | None = None
    spec: dict[str, Any] | None = None

    @property
    def rank(self) -> float:
        """What the search minimises: a run that did not finish with a loss is infinitely bad."""
        return self.loss if self.status == RunStatus.OK else math.inf

    def report(self) -> dict[str, Any]:
        row = {"key": self.key, "hparams": self.hparams, "seed": self.seed, "loss": self.loss,
               "status": self.status.value}
        if self.reason:
            row["reason"] = self.reason
        row["result"] = self.result
        return row


def _run_from_record(record: RunRecord, hparams: Config, seed: int) -> EvaluatedRun:
    reason = record.error.strip().splitlines()[-1] if record.error else None
    if record.status == RunStatus.DIVERGED and record.result:
        reason = record.result.get("reason")
    return EvaluatedRun(record.key, hparams, seed, record.status, record.loss, reason, record.result, record.spec)


def _config_id(hparams: Config, seed: int) -> tuple:
    return tuple(sorted(hparams.items())), seed


class Progress:
    """Runs done / planned and the best loss: a tqdm bar on a terminal, plain log lines otherwise (and when
    several searches report at once)."""

    def __init__(self, label: str, enabled: bool, lines_only: bool = False):
        on_terminal = enabled and sys.stderr.isatty() and not lines_only
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

    def trained(self, run: EvaluatedRun, best: float | None) -> None:
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
        self.claims = RunClaims(store)
        self.seed = params.study.seed
        self.runs: dict[tuple, EvaluatedRun] = {}
        self.requested: dict[tuple, None] = {}  # every config in the order first asked for
        self.speculative: dict[str, tuple[Config, int, dict[str, Any]]] = {}  # submitted ahead, not back yet
        self.trained = self.reused = 0

    def known(self, hparams: Config) -> bool:
        return _config_id(hparams, self.seed) in self.runs

    def best_loss(self) -> float | None:
        finished = [run.loss for run in self.runs.values() if run.status == RunStatus.OK and run.seed == self.seed]
        return min(finished, default=None)

    def finished_losses(self, hparams: Config) -> dict[int, float]:
        """The loss of every finished replicate of a config, by seed."""
        return {run.seed: run.loss for run in self.runs.values()
                if run.hparams == hparams and run.status == RunStatus.OK and run.loss is not None}

    def ordered_runs(self) -> list[EvaluatedRun]:
        """Every run in the order the search asked for it (not the order a pool finished it)."""
        return [self.runs[config] for config in self.requested if config in self.runs]

    def spec(self, hparams: Config, seed: int) -> dict[str, Any]:
        """The run spec of a config on replicate `seed`: the sweep's seed, or noise seed `study.seed + i`,
        which moves the initialisation and/or the batch order by i (`search.noise_varies`)."""
        offset, varies = seed - self.seed, self.params.search.noise_varies
        return make_run_spec(
            self.params, self.scale_name, hparams, self.data,
            seed=self.seed + (offset if varies in ("both", "init") else 0),
            batch_seed=self.params.study.data.seed + (offset if varies in ("both", "data_order") else 0),
        )

    def prefetch(self, configs: list[Config]) -> None:
        """Start training configs the search will probably ask for next, on workers that would otherwise idle
        (`search.speculate`; only on a pool shared by a phase). Their results are stored like any run."""
        if not isinstance(self.executor, SharedPoolClient):
            return
        tasks = []
        for hparams in configs:
            if _config_id(hparams, self.seed) in self.runs:
                continue
            spec = self.spec(hparams, self.seed)
            key = run_key(spec, self.trainer, self.trainer_code)
            if key in self.speculative or invalid_reason(spec) or self.store.get_result(key) is not None:
                continue
            if self.claims.acquire(key):
                self.speculative[key] = (dict(hparams), self.seed, spec)
                tasks.append(Task(key, {**spec, "checkpoint_dir": str(self.store.checkpoint_dir(key))}))
        self.progress.plan(len(tasks), 0, self.best_loss())
        self.executor.submit(tasks, speculative=True)

    def drain(self) -> None:
        """Wait for the runs still training ahead of the search (they are stored, not lost)."""
        if self.speculative:
            self._record_outcomes({}, self.executor.wait_for(set(self.speculative)))

    def unused_speculation(self) -> int:
        return sum(config not in self.requested for config in self.runs)

    def evaluate(self, configs: list[Config], seeds: list[int] | None = None) -> list[EvaluatedRun]:
        """Every config on every seed (default: the sweep's seed), in that order; duplicates are run once."""
        pairs = [(dict(hparams), seed) for hparams in configs for seed in (seeds or [self.seed])]
        self.requested.update((_config_id(hparams, seed), None) for hparams, seed in pairs)
        tasks: dict[str, tuple[Config, int, dict[str, Any]]] = {}
        ahead: set[str] = set()  # already training speculatively: wait for those
        reused = 0
        for hparams, seed in pairs:
            if _config_id(hparams, seed) in self.runs:
                continue
            spec = self.spec(hparams, seed)
            key = run_key(spec, self.trainer, self.trainer_code)
            if key in self.speculative:
                ahead.add(key)
                continue
            reason = invalid_reason(spec)
            record = None if reason else self.store.get_result(key)  # a failed run is trained again
            if reason:
                self.runs[_config_id(hparams, seed)] = EvaluatedRun(key, hparams, seed, RunStatus.SKIPPED, None, reason,
                                                           spec=spec)
            elif record is not None:
                self.runs[_config_id(hparams, seed)] = _run_from_record(record, hparams, seed)
                reused += 1
            else:
                tasks[key] = (hparams, seed, {**spec, "checkpoint_dir": str(self.store.checkpoint_dir(key))})
        self.reused += reused
        self.progress.plan(len(tasks), reused, self.best_loss())
        if tasks:
            self.executor.start()  # a worker that cannot start stops the sweep before any run is claimed
        while tasks:
            claimed = [key for key in list(tasks) if self.claims.acquire(key)]
            for key in list(tasks):  # stored meanwhile by another driver (it stores, then releases its claim)
                record = self.store.get_result(key)
                if record is not None:
                    hparams, seed, _ = tasks.pop(key)
                    self.claims.release(key)
                    run = self.runs[_config_id(hparams, seed)] = _run_from_record(record, hparams, seed)
                    self.reused += 1
                    self.progress.trained(run, self.best_loss())
            self._train({key: tasks.pop(key) for key in claimed if key in tasks})
            if tasks:  # claimed by other live drivers: wait for their results (or for their claims to go stale)
                time.sleep(CLAIM_POLL_S)
        ahead &= set(self.speculative)  # some may have come back while this line trained
        if ahead:
            self._record_outcomes({}, self.executor.wait_for(ahead))
        return [self.runs[_config_id(hparams, seed)] for hparams, seed in pairs]

    def _train(self, tasks: dict[str, tuple[Config, int, dict[str, Any]]]) -> None:
        """Train claimed tasks; store each outcome as it comes, then release its claim."""
        if tasks:
            self._record_outcomes(tasks, self.executor.run([Task(key, spec) for key, (_, _, spec) in tasks.items()]))

    def _record_outcomes(self, tasks: dict[str, tuple[Config, int, dict[str, Any]]],
                         outcomes: Iterator[Outcome]) -> None:
        """Store each outcome (of `tasks` or of a speculative run) as it comes, then release its claim."""
        for outcome in outcomes:
            hparams, seed, _ = tasks[outcome.key] if outcome.key in tasks else self.speculative.pop(outcome.key)
            record = outcome_record(outcome, self.trainer, self.trainer_code)
            self.store.put(outcome.key, record)
            self.claims.release(outcome.key)
            run = self.runs[_config_id(hparams, seed)] = _run_from_record(record, hparams, seed)
            self.trained += 1
            self.progress.trained(run, self.best_loss())



def outcome_record(outcome: Outcome, trainer: str, trainer_code: str) -> RunRecord:
    """The run store's record of an executor outcome: failed (a fault), diverged or ok."""
    if outcome.error is not None:
        status, loss = RunStatus.FAILED, None
    elif is_diverged(outcome.result):
        status, loss = RunStatus.DIVERGED, None
    else:
        status, loss = RunStatus.OK, float(outcome.result["loss"])
    return RunRecord(
        key=outcome.key, status=status, loss=loss, spec=outcome.spec, trainer=trainer, trainer_code=trainer_code,
        result=outcome.result, error=outcome.error, attempts=outcome.attempts, wall_s=round(outcome.wall_s, 3),
    )


@contextlib.contextmanager
def heartbeat(claims: RunClaims) -> Iterator[None]:
    """Keep this driver's claims fresh while it works; release them all when it stops, however it stops."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(CLAIM_HEARTBEAT_S):
            claims.refresh()

    thread = threading.Thread(target=beat, name="optsweep-claims-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        claims.release_all()


# --- coordinate descent ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Descent:
    best: EvaluatedRun
    passes: int
    converged: bool
    trajectory: list[dict[str, Any]]
    why_not_converged: str | None = None  # one sentence whenever `converged` is False

    def then(self, more: Descent) -> Descent:
        """This descent continued by `more` (which started from this one's best)."""
        return Descent(more.best, self.passes + more.passes, more.converged, self.trajectory + more.trajectory,
                       more.why_not_converged)


def _beats(challenger: EvaluatedRun, incumbent: EvaluatedRun, search: SearchSettings,
           evaluator: RunEvaluator) -> bool:
    """Strictly better by more than the tolerance, under common random numbers: the mean loss over the seeds
    both configs finished on (the sweep's seed, and the noise seeds where both ran them). A diverged or failed
    run never beats anything."""
    if math.isinf(challenger.rank) or math.isinf(incumbent.rank):
        return not math.isinf(challenger.rank)
    return beats_under_common_seeds(evaluator.finished_losses(challenger.hparams),
                                    evaluator.finished_losses(incumbent.hparams), search.tolerance,
                                    search.tolerance_kind)


def _step(pass_number: int, hparam: str, incumbent: EvaluatedRun) -> dict[str, Any]:
    return {"pass": pass_number, "hparam": hparam, "baseline": dict(incumbent.hparams), "loss": incumbent.loss}


def _descend_in_passes(space: SearchSpace, search: SearchSettings, evaluator: RunEvaluator) -> Descent:
    """Coordinate by coordinate; converged when a whole pass leaves the baseline unchanged."""
    baseline = dict(space.baseline)
    if not space.free:
        return Descent(evaluator.evaluate([baseline])[0], 0, True, [])
    trajectory = []
    for pass_number in range(1, search.passes + 1):
        changed = False
        for i, h in enumerate(space.free):
            # The next lines at today's baseline: what the search needs next unless this line moves it.
            lines_ahead = min(search.speculate, len(space.free) - 1)
            ahead = [space.free[(i + k) % len(space.free)] for k in range(1, lines_ahead + 1)]
            evaluator.prefetch([{**baseline, g: v} for g in ahead for v in space.grid[g]])
            # The incumbent rides along with the first slice, so that it costs no batch of its own.
            incumbent, *line = evaluator.evaluate([baseline] + [{**baseline, h: v} for v in space.grid[h]])
            challenger = min(line, key=lambda run: run.rank)
            if _beats(challenger, incumbent, search, evaluator):
                baseline, incumbent, changed = dict(challenger.hparams), challenger, True
            trajectory.append(_step(pass_number, h, incumbent))
        if not changed:
            return Descent(incumbent, pass_number, True, trajectory)
    return Descent(incumbent, search.passes, False, trajectory,
                   "the pass budget ran out before a pass left the best unchanged")


def _neighbourhood(space: SearchSpace, center: Config) -> list[Config]:
    return [dict(center)] + [{**center, h: v} for h in space.free for v in space.grid[h]]


def _descend_by_neighbourhood(space: SearchSpace, search: SearchSettings, evaluator: RunEvaluator) -> Descent:
    """The original study's rule: move to the best run so far; converged once its neighbourhood is all run."""
    baseline = dict(space.baseline)
    trajectory = []
    for pass_number in range(1, search.passes + 1):
        incumbent = evaluator.evaluate(_neighbourhood(space, baseline))[0]
        base_seed = [run for run in evaluator.ordered_runs() if run.seed == evaluator.seed]
        challenger = min(base_seed, key=lambda run: run.rank)
        if _beats(challenger, incumbent, search, evaluator):
            baseline, incumbent = dict(challenger.hparams), challenger
        trajectory.append(_step(pass_number, "neighbourhood", incumbent))
        if all(evaluator.known(config) for config in _neighbourhood(space, baseline)):
            return Descent(incumbent, pass_number, True, trajectory)
    return Descent(incumbent, search.passes, False, trajectory,
                   "the pass budget ran out before the best's neighbourhood was complete")


# --- grids that follow an optimum past their edge -----------------------------------------------------------

GEOMETRIC_LINEAR_AXIS = ("weight_decay", "clip")  # analysed on a linear axis, but their grids are geometric


def next_value_past_edge(h: str, edge: float, neighbour: float) -> float:
    """One more grid step beyond `edge`, away from `neighbour`: geometric in 1 - x on a log1m axis (betas,
    momenta), geometric for positive values on a log or log1p axis (and weight decay, clipping), else linear."""
    axis = axis_of(h)
    if axis == "log1m" and edge < 1 and neighbour < 1:
        return round_sig(1 - (1 - edge) ** 2 / (1 - neighbour))
    if (axis in ("log", "log1p") or h in GEOMETRIC_LINEAR_AXIS) and edge > 0 and neighbour > 0:
        return round_sig(edge * edge / neighbour)
    return round_sig(2 * edge - neighbour)


def _edge_extensions(params: StudyParams, space: SearchSpace, best: EvaluatedRun,
                     grown: dict[str, int]) -> list[dict[str, Any]]:
    """For each free hyperparameter whose best value is a grid edge: the value one grid step further, when it
    is valid and the grid has grown fewer than `search.extend_edges` times at that end."""
    added, integers = [], params.integer_hparams()
    for h in space.free:
        values = sorted(space.grid[h])
        if len(values) < 2 or best.status != RunStatus.OK or best.hparams[h] not in (values[0], values[-1]):
            continue
        end = "low" if best.hparams[h] == values[0] else "high"
        if grown.get(f"{h}:{end}", 0) >= params.search.extend_edges:
            continue
        edge, neighbour = (values[0], values[1]) if end == "low" else (values[-1], values[-2])
        value = next_value_past_edge(h, edge, neighbour)
        value = int(round(value)) if h in integers else value
        try:
            params.hparams_with({h: value}, key=f"search.extend_edges: {h}")
        except ParamsError:
            continue  # past the domain (weight decay below 0, say): the edge is a real bound
        if value in values:
            continue
        grown[f"{h}:{end}"] = grown.get(f"{h}:{end}", 0) + 1
        added.append({"hparam": h, "end": end, "value": value, "edge": edge, "edge_loss": best.loss})
    return added


def descend_following_edges(params: StudyParams, space: SearchSpace, evaluator: RunEvaluator, passes: int,
                            grown: dict[str, int]) -> tuple[Descent, SearchSpace, list[dict[str, Any]]]:
    """Coordinate descent from `space.baseline` in at most `passes` passes; while the optimum sits on a grid
    edge, grow that grid by one step and descend again from the optimum (stored runs are reused), up to
    `search.extend_edges` steps per end (counted in `grown`, across calls)."""
    search = params.search.model_copy(update={"passes": passes})
    descend = _descend_by_neighbourhood if search.stop_rule == "neighbourhood" else _descend_in_passes
    descent = descend(space, search, evaluator)
    extensions: list[dict[str, Any]] = []
    while added := _edge_extensions(params, space, descent.best, grown):
        extensions += added
        grid = {h: sorted([*values, *(a["value"] for a in added if a["hparam"] == h)])
                for h, values in space.grid.items()}
        space = dataclasses.replace(space, grid=grid, baseline=dict(descent.best.hparams))
        # The steps past the edges are independent of each other: they go out as one batch (the descent below
        # asks for them one line at a time, and finds them run), so a shared pool trains them side by side.
        evaluator.evaluate([{**descent.best.hparams, a["hparam"]: a["value"]} for a in added])
        # The passes left (at least one): growing a grid continues the search, it does not restart it.
        remaining = search.model_copy(update={"passes": max(1, search.passes - descent.passes)})
        descent = descent.then(descend(space, remaining, evaluator))
    return descent, space, extensions


def _run_beating(best: EvaluatedRun, search: SearchSettings, evaluator: RunEvaluator) -> EvaluatedRun | None:
    """The sweep's lowest base-seed run among those that beat `best` (under common random numbers), if any."""
    beating = [run for run in evaluator.ordered_runs()
               if run.seed == evaluator.seed and _beats(run, best, search, evaluator)]
    return min(beating, key=lambda run: run.rank, default=None)


def _changed(hparams: Config, best: Config) -> str:
    return ", ".join(f"{h}={v:g}" for h, v in hparams.items() if best.get(h) != v)


@dataclasses.dataclass
class SearchOutcome:
    """Where the search ended: its descent, the (grown) space, and the measurements through its best."""

    descent: Descent
    space: SearchSpace
    extensions: list[dict[str, Any]]
    slices: dict[str, list[dict[str, Any]]]
    noise: dict[str, Any] | None
    carried: CarriedOptimum | None


def search_to_lowest_run(params: StudyParams, space: SearchSpace, evaluator: RunEvaluator,
                         carry: Callable[[EvaluatedRun], CarriedOptimum | None] | None = None) -> SearchOutcome:
    """Coordinate descent (following grid edges), then the 1-D slices through its best and the best's seed
    runs. A run of the sweep that beats that best by more than the tolerance (a slice point, an edge step, a
    competitor on the noise seeds) was measured at a better config: the descent continues from it while passes
    are left, and once they are spent it becomes the best, not converged. So the search ends on the lowest of
    its own runs (within the tolerance, under common random numbers), with the slices and seeds through it.
    `carry`: another optimizer's optimum, carried to the first descent's best and trained as one more run of
    the sweep."""
    search, grown = params.search, {}
    descent, space, extensions = descend_following_edges(params, space, evaluator, search.passes, grown)
    carried = carry(descent.best) if carry else None
    if carried:
        evaluator.evaluate([carried.hparams])
    while True:
        slices = _slices(space, descent.best, evaluator)
        noise = _seed_noise(descent.best, search, evaluator)
        lowest = _run_beating(descent.best, search, evaluator)
        if lowest is None:
            return SearchOutcome(descent, space, extensions, slices, noise, carried)
        step = _step(descent.passes, "lowest run", lowest)
        passes_left = search.passes - descent.passes
        if passes_left <= 0:
            why = ("after the pass budget ran out, a run of the sweep "
                   f"({_changed(lowest.hparams, descent.best.hparams)}: {lowest.loss:.4g}) beat the best "
                   f"({descent.best.loss:.4g}): it is the best, and no pass has confirmed it")
            descent = Descent(lowest, descent.passes, False, descent.trajectory + [step], why)
            continue
        space = dataclasses.replace(space, baseline=dict(lowest.hparams))
        more, space, added = descend_following_edges(params, space, evaluator, passes_left, grown)
        descent = dataclasses.replace(descent, trajectory=descent.trajectory + [step]).then(more)
        extensions += added


# --- reporting -----------------------------------------------------------------------------------------------


def _slices(space: SearchSpace, best: EvaluatedRun, evaluator: RunEvaluator) -> dict[str, list[dict[str, Any]]]:
    """The 1-D line through the best along every free hyperparameter (runs any point not yet evaluated)."""
    points = [(h, v) for h in space.free for v in space.grid[h]]
    runs = evaluator.evaluate([{**best.hparams, h: v} for h, v in points])  # one batch: the lines are independent
    slices: dict[str, list[dict[str, Any]]] = {h: [] for h in space.free}
    for (h, v), run in zip(points, runs):
        slices[h].append({"value": v, "loss": run.loss, "status": run.status})
    return slices


def _near_best(best: EvaluatedRun, search: SearchSettings, evaluator: RunEvaluator) -> list[dict[str, Any]]:
    if best.status != RunStatus.OK:
        return []
    limit = best.loss + tolerance_margin(search.tolerance, search.tolerance_kind, best.loss)
    close = [run for run in evaluator.ordered_runs()
             if run.seed == evaluator.seed and run.status == RunStatus.OK and run.loss <= limit]
    return [{"hparams": run.hparams, "loss": run.loss} for run in sorted(close, key=lambda run: run.loss)]


def _seed_noise(best: EvaluatedRun, search: SearchSettings, evaluator: RunEvaluator) -> dict[str, Any] | None:
    """The best and its closest competitors on extra seeds; std pooled over configs (n - 1 weighted)."""
    if search.noise_seeds == 0 or best.status != RunStatus.OK:
        return None
    competitors = sorted(
        (run for run in evaluator.ordered_runs()
         if run.seed == evaluator.seed and run.status == RunStatus.OK and run.hparams != best.hparams),
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


@dataclasses.dataclass
class CarriedOptimum:
    """Another optimizer's best at this scale, carried to this optimizer's hyperparameters."""

    source: str  # the optimizer it came from
    carried: list[str]  # the hyperparameter names taken from it
    hparams: Config  # the rest at this sweep's best (when it was carried)


def _carried_optimum(params: StudyParams, scale_name: str, best: EvaluatedRun,
                     source_dir: Path | None) -> CarriedOptimum | None:
    """Another optimizer's best at this scale (`source_dir/<scale>.json`, AdamW's), carried to this one where
    the hyperparameter names match and the rest kept at this sweep's best: does an optimum transfer between
    optimizers? None without a source result, a finished best, or a carried value in this optimizer's domain."""
    path = source_dir / f"{scale_name}.json" if source_dir else None
    if path is None or not path.is_file() or best.status != RunStatus.OK:
        return None
    source = read_document(path, SweepResult)
    carried = [h for h in best.hparams if h in source.best]
    hparams = {**best.hparams, **{h: source.best[h] for h in carried}}
    try:
        params.hparams_with(hparams, key=f"{path}: best")
    except ParamsError:
        return None
    return CarriedOptimum(source.optimizer, carried, hparams)


def _transfer_report(carried: CarriedOptimum | None, best: EvaluatedRun,
                     evaluator: RunEvaluator) -> dict[str, Any] | None:
    if carried is None:
        return None
    run = evaluator.evaluate([carried.hparams])[0]  # trained during the search: read back from its memory
    return {"source": carried.source, "carried": carried.carried, "hparams": carried.hparams, "loss": run.loss,
            "status": run.status, "tuned_loss": best.loss}


def _compute(evaluator: RunEvaluator, wall_s: float) -> dict[str, Any]:
    """The cost of every run this sweep's result rests on (token budgets), and what this invocation did."""
    runs = [run for run in evaluator.ordered_runs() if run.status != RunStatus.SKIPPED]
    tokens = sum(run.spec["scale"]["tokens"] for run in runs)
    flops = sum(run.spec["scale"]["tokens"] * run.spec["scale"]["flops_per_token"] for run in runs)
    return {"runs_planned": len(runs), "runs_trained": evaluator.trained, "runs_reused": evaluator.reused,
            "runs_speculative_unused": evaluator.unused_speculation(), "tokens": tokens, "flops": flops,
            "wall_s": round(wall_s, 3)}


# --- the sweep ------------------------------------------------------------------------------------------------


def study_data(params: StudyParams) -> dict[str, Any] | None:
    """The prepared data identity when the study trains with optsweep's own trainer (else None)."""
    if params.study.trainer != DEFAULT_TRAINER:
        return None
    from .data import ensure_prepared  # only the default trainer reads prepared shards

    return ensure_prepared(params)


def _search(params: StudyParams, scale_name: str, sensitivity_path: str | None, transfer_from: Path | None,
            data: dict[str, Any] | None, executor: Executor | SharedPoolClient, progress: bool) -> SweepResult:
    """Coordinate descent at one scale on a given executor; the result document, not yet written.
    `transfer_from`: a folder of another optimizer's sweep results whose best is carried over and trained."""
    started = time.perf_counter()
    search = params.search
    space = search_space(params, scale_name, sensitivity_path)
    trainer = params.study.trainer
    trainer_code = code_identity(trainer)
    bar = Progress(f"sweep {scale_name}" + (" (law)" if space.phase == "law" else ""), progress,
                   lines_only=isinstance(executor, SharedPoolClient))
    try:
        evaluator = RunEvaluator(params, scale_name, data, trainer_code, RunStore(params.study.store), executor, bar)
        with heartbeat(evaluator.claims):
            outcome = search_to_lowest_run(
                params, space, evaluator, lambda best: _carried_optimum(params, scale_name, best, transfer_from))
            descent = outcome.descent
            transferred = _transfer_report(outcome.carried, descent.best, evaluator)
            evaluator.drain()
    finally:
        bar.close()
    transfer = params.study.lr_transfer
    width = params.scale(scale_name).width
    declared = load_optimizer(params.study.optimizer).hparams
    return SweepResult.model_validate(to_strict({
        "scale": make_run_spec(params, scale_name, space.baseline, data)["scale"],
        "optimizer": params.study.optimizer,
        "axes": {h: declared[h].axis if h in declared else axis_of(h) for h in space.baseline},
        "phase": space.phase,
        "free": space.free,
        "fixed": space.fixed,
        "grid": outcome.space.grid,
        "grid_extensions": outcome.extensions,
        "order": params.coordinate_order(),
        "baseline": space.baseline,
        "best": descent.best.hparams,
        "best_loss": descent.best.loss,
        "near_best": _near_best(descent.best, search, evaluator),
        "passes": descent.passes,
        "converged": descent.converged,
        "why_not_converged": descent.why_not_converged,
        "stop_rule": search.stop_rule,
        "tolerance": search.tolerance,
        "tolerance_kind": search.tolerance_kind,
        "trajectory": descent.trajectory,
        "runs": [run.report() for run in evaluator.ordered_runs()],
        "slices": outcome.slices,
        "noise": outcome.noise,
        "failed": [{"key": run.key, "hparams": run.hparams, "seed": run.seed, "error": run.reason}
                   for run in evaluator.ordered_runs() if run.status == RunStatus.FAILED],
        "compute": _compute(evaluator, time.perf_counter() - started),
        "transfer": transferred,
        "provenance": provenance(
            params.params_hash(),
            data_hash=data.get("hash") if data else None,
            trainer=trainer,
            trainer_code=trainer_code,
            seed=params.study.seed,
            lr_transfer={"rule": transfer.rule, "reference_width": transfer.reference_width,
                         "factor": transfer.factor(width)},
        ),
    }))


def _failures(results: list[SweepResult]) -> str | None:
    failed = [(result.scale["name"], run) for result in results for run in result.failed]
    if not failed:
        return None
    scales = ", ".join(sorted({name for name, _ in failed}))
    return (f"{scales}: {len(failed)} run(s) failed (a fault, not a result), e.g. {failed[0][1].error}; finished "
            f"runs are stored, run the sweep again to retry them (`optsweep store list --status failed`)")


def run_sweep(params: StudyParams, scale_name: str, out_path: Path, sensitivity_path: str | None = None,
              progress: bool = True, transfer_from: Path | None = None) -> dict[str, Any]:
    """Coordinate descent at one scale; writes `out_path` (a `SweepResult`, atomically) and returns its JSON.

    Raises `FailedRuns` after writing when runs failed (they are trained again by the next invocation)."""
    code_identity(params.study.trainer)  # a missing trainer module fails here, before data or workers
    data = study_data(params)
    with make_executor(params.study) as executor:
        result = _search(params, scale_name, sensitivity_path, transfer_from, data, executor, progress)
    write_document(Path(out_path), result)
    failures = _failures([result])
    if failures:
        raise FailedRuns(failures)
    return as_json(result)


# --- a whole phase on one pool --------------------------------------------------------------------------------


class SharedPoolClient:
    """One search's view of a pool that the searches of a phase share: its runs go into the common inbox and
    only its own outcomes come back, so every worker stays busy while each search waits for its line."""

    def __init__(self, inbox: TaskInbox, routes: dict[str, queue.Queue], lock: threading.Lock):
        self.inbox, self.routes, self.lock = inbox, routes, lock
        self.outcomes: queue.Queue[Outcome | None] = queue.Queue()

    def start(self) -> None:
        """The phase started the pool (and ran the preflight) before any search began."""

    def submit(self, tasks: list[Task], speculative: bool = False) -> None:
        with self.lock:
            self.routes.update({task.key: self.outcomes for task in tasks})
        self.inbox.submit(tasks, speculative)

    def wait_for(self, keys: set[str]) -> Iterator[Outcome]:
        """This search's outcomes as they come (speculative ones too), until every key in `keys` is among them."""
        pending = set(keys)
        while pending:
            outcome = self.outcomes.get()
            if outcome is None:  # the pool stopped (Ctrl-C)
                raise KeyboardInterrupt
            pending.discard(outcome.key)
            yield outcome

    def run(self, tasks: list[Task]) -> Iterator[Outcome]:
        self.submit(tasks)
        yield from self.wait_for({task.key for task in tasks})


def _search_in_thread(errors: list[BaseException], results: dict[str, SweepResult], name: str,
                      *arguments: Any) -> None:
    try:
        results[name] = _search(*arguments)
    except BaseException as error:  # handed to the main thread, which raises it once the phase has stopped
        errors.append(error)


def run_phase(params: StudyParams, phase: Literal["phase1", "law"], out_dir: Path,
              sensitivity_path: str | None = None, progress: bool = True,
              transfer_from: Path | None = None) -> dict[str, SweepResult]:
    """The searches of every scale of a phase at once, on one pool of workers.

    Each scale's coordinate descent runs in its own thread and submits its runs to the shared pool, which
    the main thread serves (so Ctrl-C, worker deaths and retries behave as for one sweep). A scale's result
    file is rewritten only when its result changed (`SweepResult.same_search`): a DVC stage downstream of an
    untouched scale then sees the same file and does not run again."""
    names = list(params.scales if phase == "phase1" else params.law_scales)
    code_identity(params.study.trainer)
    data = study_data(params)
    results: dict[str, SweepResult] = {}
    errors: list[BaseException] = []
    with make_executor(params.study) as executor:
        executor.start()  # workers and the device preflight before any search begins
        if executor.inline:  # one worker: nothing to share, the scales go one after another
            for name in names:
                _search_in_thread(errors, results, name, params, name, sensitivity_path, transfer_from, data,
                                  executor, progress)
        else:
            _serve_phase(executor, names, errors, results, params, sensitivity_path, transfer_from, data, progress)
    out_dir.mkdir(parents=True, exist_ok=True)  # a phase with no scales still has its (empty) folder
    for name, result in results.items():
        _write_if_changed(out_dir / f"{name}.json", result)
    if errors:
        raise errors[0]
    failures = _failures(list(results.values()))
    if failures:
        raise FailedRuns(failures)
    return results


def _serve_phase(executor: Executor, names: list[str], errors: list[BaseException],
                 results: dict[str, SweepResult], *arguments: Any) -> None:
    params, sensitivity_path, transfer_from, data, progress = arguments
    inbox, routes, lock = TaskInbox(), {}, threading.Lock()
    threads = [threading.Thread(target=_search_in_thread, name=f"search-{name}", daemon=True,
                                args=(errors, results, name, params, name, sensitivity_path, transfer_from, data,
                                      SharedPoolClient(inbox, routes, lock), progress))
               for name in names]
    for thread in threads:
        thread.start()
    def close_when_searched() -> None:
        for thread in threads:
            thread.join()
        inbox.close()

    threading.Thread(target=close_when_searched, name="phase-closer", daemon=True).start()
    try:
        for outcome in executor.serve(inbox):
            with lock:
                route = routes.pop(outcome.key)
            route.put(outcome)
    except KeyboardInterrupt:
        with lock:
            for route in routes.values():
                route.put(None)
        for thread in threads:
            thread.join()
        raise
    for thread in threads:
        thread.join()


def _write_if_changed(path: Path, result: SweepResult) -> None:
    try:
        current = read_document(path, SweepResult) if path.is_file() else None
    except ParamsError:
        current = None
    if current is None or not current.same_search(result):
        write_document(path, result)
