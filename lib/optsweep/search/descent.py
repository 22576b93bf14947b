"""The stop rules of coordinate descent, as the study brief prescribes.

From the baseline, sweep one free hyperparameter over its grid with the others fixed, adopt the best value
if it beats the incumbent by more than the tolerance, go on to the next one; repeat passes until a whole
pass changes nothing (`search.stop_rule: pass`). The original study's rule is offered too
(`stop_rule: neighbourhood`): move to the best run found so far and evaluate its whole 1-D neighbourhood,
until that neighbourhood holds nothing new. A rule sees only `Evaluations` (history.py): what was run, and a
way to run more.
"""

from __future__ import annotations

import dataclasses
import math

from ..params.sections import SearchSettings
from ..results.documents import TrajectoryStep, beats_under_common_seeds
from .history import EvaluatedRun, Evaluations, SweepHistory
from .space import Config, SearchSpace


@dataclasses.dataclass
class Descent:
    best: EvaluatedRun
    passes: int
    converged: bool
    trajectory: list[TrajectoryStep]
    why_not_converged: str | None = None  # one sentence whenever `converged` is False

    def then(self, more: Descent) -> Descent:
        """This descent continued by `more` (which started from this one's best)."""
        return Descent(more.best, self.passes + more.passes, more.converged, self.trajectory + more.trajectory,
                       more.why_not_converged)


def beats(challenger: EvaluatedRun, incumbent: EvaluatedRun, search: SearchSettings, history: SweepHistory) -> bool:
    """Strictly better by more than the tolerance, under common random numbers: the mean loss over the seeds
    both configs finished on (the sweep's seed, and the noise seeds where both ran them). A diverged or failed
    run never beats anything."""
    if math.isinf(challenger.rank) or math.isinf(incumbent.rank):
        return not math.isinf(challenger.rank)
    return beats_under_common_seeds(history.finished_losses(challenger.hparams),
                                    history.finished_losses(incumbent.hparams), search.tolerance,
                                    search.tolerance_kind)


def trajectory_step(pass_number: int, hparam: str, incumbent: EvaluatedRun) -> TrajectoryStep:
    return TrajectoryStep(pass_number=pass_number, hparam=hparam, baseline=dict(incumbent.hparams),
                          loss=incumbent.loss)


def _descend_in_passes(space: SearchSpace, search: SearchSettings, runs: Evaluations) -> Descent:
    """Coordinate by coordinate; converged when a whole pass leaves the baseline unchanged."""
    baseline = dict(space.baseline)
    if not space.free:
        return Descent(runs.evaluate([baseline])[0], 0, True, [])
    trajectory = []
    for pass_number in range(1, search.passes + 1):
        changed = False
        for i, h in enumerate(space.free):
            # The next lines at today's baseline: what the search needs next unless this line moves it.
            lines_ahead = min(search.speculate, len(space.free) - 1)
            ahead = [space.free[(i + k) % len(space.free)] for k in range(1, lines_ahead + 1)]
            runs.prefetch([{**baseline, g: v} for g in ahead for v in space.grid[g]])
            # The incumbent rides along with the first slice, so that it costs no batch of its own.
            incumbent, *line = runs.evaluate([baseline] + [{**baseline, h: v} for v in space.grid[h]])
            challenger = min(line, key=lambda run: run.rank)
            if beats(challenger, incumbent, search, runs.history):
                baseline, incumbent, changed = dict(challenger.hparams), challenger, True
            trajectory.append(trajectory_step(pass_number, h, incumbent))
        if not changed:
            return Descent(incumbent, pass_number, True, trajectory)
    return Descent(incumbent, search.passes, False, trajectory,
                   "the pass budget ran out before a pass left the best unchanged")


def _neighbourhood(space: SearchSpace, center: Config) -> list[Config]:
    return [dict(center)] + [{**center, h: v} for h in space.free for v in space.grid[h]]


def _descend_by_neighbourhood(space: SearchSpace, search: SearchSettings, runs: Evaluations) -> Descent:
    """The original study's rule: move to the best run so far; converged once its neighbourhood is all run."""
    baseline = dict(space.baseline)
    trajectory = []
    for pass_number in range(1, search.passes + 1):
        incumbent = runs.evaluate(_neighbourhood(space, baseline))[0]
        challenger = min(runs.history.on_sweep_seed(), key=lambda run: run.rank)
        if beats(challenger, incumbent, search, runs.history):
            baseline, incumbent = dict(challenger.hparams), challenger
        trajectory.append(trajectory_step(pass_number, "neighbourhood", incumbent))
        if all(runs.history.known(config) for config in _neighbourhood(space, baseline)):
            return Descent(incumbent, pass_number, True, trajectory)
    return Descent(incumbent, search.passes, False, trajectory,
                   "the pass budget ran out before the best's neighbourhood was complete")


def descend(space: SearchSpace, search: SearchSettings, runs: Evaluations) -> Descent:
    """Coordinate descent from `space.baseline` under the study's stop rule (`search.stop_rule`)."""
    rule = _descend_by_neighbourhood if search.stop_rule == "neighbourhood" else _descend_in_passes
    return rule(space, search, runs)
