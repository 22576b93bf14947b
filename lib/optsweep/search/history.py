"""What a stop rule sees: the runs of the sweep so far, and a way to run more (as Optuna's samplers see a
study's trials and ask for the next).

`Evaluations` is the whole of it: the rules never see where runs come from (the run store, the executor,
claims), so a rule can be tested, or written anew, against any object with a history and an `evaluate`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Protocol

from ..jsonio import to_strict
from ..results.documents import SweptRun
from ..runs.store import RunRecord, RunStatus
from .space import Config


@dataclasses.dataclass
class EvaluatedRun:
    """One evaluated config of this sweep."""

    key: str
    hparams: Config
    seed: int  # the replicate: the sweep's seed, or a noise seed (see `SweepPlan.spec`)
    status: RunStatus
    loss: float | None
    reason: str | None = None
    result: dict[str, Any] | None = None
    spec: dict[str, Any] | None = None

    @property
    def rank(self) -> float:
        """What the search minimises: a run that did not finish with a loss is infinitely bad."""
        return self.loss if self.status == RunStatus.OK else math.inf

    def swept(self) -> SweptRun:
        """The run as the sweep result lists it (a trainer's result may hold NaN or numpy numbers: JSON's)."""
        return SweptRun(key=self.key, hparams=self.hparams, seed=self.seed, loss=self.loss, status=self.status,
                        reason=self.reason or None, result=to_strict(self.result))


def run_from_record(record: RunRecord, hparams: Config, seed: int) -> EvaluatedRun:
    reason = record.error.strip().splitlines()[-1] if record.error else None
    if record.status == RunStatus.DIVERGED and record.result:
        reason = record.result.get("reason")
    return EvaluatedRun(record.key, hparams, seed, record.status, record.loss, reason, record.result, record.spec)


def _config_id(hparams: Config, seed: int) -> tuple:
    return tuple(sorted(hparams.items())), seed


class SweepHistory:
    """Every run of one sweep, by (config, seed), and the order the search first asked for each."""

    def __init__(self, seed: int):
        self.seed = seed  # the sweep's own replicate; the noise seeds follow it
        self._runs: dict[tuple, EvaluatedRun] = {}
        self._requested: dict[tuple, None] = {}  # an ordered set

    def ask(self, pairs: list[tuple[Config, int]]) -> None:
        """The search asked for these (config, seed) pairs: they are its runs, in this order."""
        self._requested.update((_config_id(hparams, seed), None) for hparams, seed in pairs)

    def add(self, run: EvaluatedRun) -> None:
        self._runs[_config_id(run.hparams, run.seed)] = run

    def get(self, hparams: Config, seed: int) -> EvaluatedRun | None:
        return self._runs.get(_config_id(hparams, seed))

    def known(self, hparams: Config) -> bool:
        """Whether the config has a run on the sweep's seed (finished or not)."""
        return _config_id(hparams, self.seed) in self._runs

    def best_loss(self) -> float | None:
        finished = [run.loss for run in self._runs.values() if run.status == RunStatus.OK and run.seed == self.seed]
        return min(finished, default=None)

    def finished_losses(self, hparams: Config) -> dict[int, float]:
        """The loss of every finished replicate of a config, by seed."""
        return {run.seed: run.loss for run in self._runs.values()
                if run.hparams == hparams and run.status == RunStatus.OK and run.loss is not None}

    def ordered_runs(self) -> list[EvaluatedRun]:
        """Every run in the order the search asked for it (not the order a pool finished it)."""
        return [self._runs[config] for config in self._requested if config in self._runs]

    def on_sweep_seed(self) -> list[EvaluatedRun]:
        """The runs on the sweep's own seed, in the order asked for: the configs the search compared."""
        return [run for run in self.ordered_runs() if run.seed == self.seed]

    def unasked(self) -> int:
        """Runs trained ahead of the search that it never asked for (`search.speculate`)."""
        return sum(config not in self._requested for config in self._runs)


class Evaluations(Protocol):
    """A stop rule's view of a sweep: what was run, and a way to run more."""

    @property
    def history(self) -> SweepHistory: ...

    def evaluate(self, configs: list[Config], seeds: list[int] | None = None) -> list[EvaluatedRun]:
        """Every config on every seed (default: the sweep's seed), in that order; a known run is not run again."""
        ...

    def prefetch(self, configs: list[Config]) -> None:
        """A hint: configs the rule will probably ask for next (they may start training on idle workers)."""
        ...
