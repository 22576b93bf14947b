"""Turning configs into runs: from the sweep's memory, then the run store, else trained by the executor.

Every run goes through the run store (never trained twice) and the executor (runs of one coordinate in
parallel). Claims keep two drivers from training the same run; a heartbeat keeps a driver's claims fresh.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
import time
from typing import Any, Iterator

from ..execution.protocol import Runner
from ..execution.tasks import Outcome, Task
from ..params.settings import StudyParams
from ..runs.store import CLAIM_HEARTBEAT_S, RunClaims, RunRecord, RunStatus, RunStore, run_key
from ..runs.trainer import invalid_reason, is_diverged, make_run_spec
from .progress import Progress
from .shared_pool import SharedPoolClient
from .space import Config

CLAIM_POLL_S = 1.0  # how often a driver looks for runs that another driver has claimed


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


class RunEvaluator:
    """Turns configs into runs: from this sweep's memory, then the run store, else trained by the executor."""

    def __init__(self, params: StudyParams, scale_name: str, data: dict[str, Any] | None, trainer_code: str,
                 store: RunStore, executor: Runner, progress: Progress):
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
