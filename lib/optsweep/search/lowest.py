"""A search that ends on the lowest of its own runs: descent, edges, slices and seeds, until no run of the
sweep beats its best."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from ..params.sections import SearchSettings
from ..params.settings import StudyParams
from .descent import Descent, beats, trajectory_step
from .edges import descend_following_edges
from .evaluator import EvaluatedRun, RunEvaluator
from .measurements import seed_noise, slices_through
from .space import Config, SearchSpace
from .transfer import CarriedOptimum


def _run_beating(best: EvaluatedRun, search: SearchSettings, evaluator: RunEvaluator) -> EvaluatedRun | None:
    """The sweep's lowest base-seed run among those that beat `best` (under common random numbers), if any."""
    beating = [run for run in evaluator.ordered_runs()
               if run.seed == evaluator.seed and beats(run, best, search, evaluator)]
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
        slices = slices_through(space, descent.best, evaluator)
        noise = seed_noise(descent.best, search, evaluator)
        lowest = _run_beating(descent.best, search, evaluator)
        if lowest is None:
            return SearchOutcome(descent, space, extensions, slices, noise, carried)
        step = trajectory_step(descent.passes, "lowest run", lowest)
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
