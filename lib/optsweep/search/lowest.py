"""A search that ends on the lowest of its own runs: descent, edges, slices and seeds, until no run of the
sweep beats its best."""

from __future__ import annotations

import dataclasses

from ..params.sections import SearchSettings
from ..results.documents import GridExtension, SeedNoise, SlicePoint
from .descent import Descent, beats, trajectory_step
from .edges import descend_following_edges
from .history import EvaluatedRun, Evaluations, SweepHistory
from .measurements import seed_noise, slices_through
from .space import Config, SearchSpace
from .sweep_plan import SweepPlan
from .transfer import CarriedOptimum, carried_optimum


def _run_beating(best: EvaluatedRun, search: SearchSettings, history: SweepHistory) -> EvaluatedRun | None:
    """The sweep's lowest base-seed run among those that beat `best` (under common random numbers), if any."""
    beating = [run for run in history.on_sweep_seed() if beats(run, best, search, history)]
    return min(beating, key=lambda run: run.rank, default=None)


def _changed(hparams: Config, best: Config) -> str:
    return ", ".join(f"{h}={v:g}" for h, v in hparams.items() if best.get(h) != v)


@dataclasses.dataclass
class SearchOutcome:
    """Where the search ended: its descent, the (grown) space, and the measurements through its best."""

    descent: Descent
    space: SearchSpace
    extensions: list[GridExtension]
    slices: dict[str, list[SlicePoint]]
    noise: SeedNoise | None
    carried: CarriedOptimum | None


def search_to_lowest_run(plan: SweepPlan, runs: Evaluations) -> SearchOutcome:
    """Coordinate descent (following grid edges), then the 1-D slices through its best and the best's seed
    runs. A run of the sweep that beats that best by more than the tolerance (a slice point, an edge step, a
    competitor on the noise seeds) was measured at a better config: the descent continues from it while passes
    are left, and once they are spent it becomes the best, not converged. So the search ends on the lowest of
    its own runs (within the tolerance, under common random numbers), with the slices and seeds through it.
    Another optimizer's optimum (`plan.carry_from`) is carried to the first descent's best and trained as one
    more run of the sweep."""
    search, grown = plan.search, {}
    descent, space, extensions = descend_following_edges(plan, plan.space, runs, search.passes, grown)
    carried = carried_optimum(plan, descent.best)
    if carried:
        runs.evaluate([carried.hparams])
    while True:
        slices = slices_through(space, descent.best, runs)
        noise = seed_noise(descent.best, search, runs)
        lowest = _run_beating(descent.best, search, runs.history)
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
        more, space, added = descend_following_edges(plan, space, runs, passes_left, grown)
        descent = dataclasses.replace(descent, trajectory=descent.trajectory + [step]).then(more)
        extensions += added
