"""Grids that follow an optimum past their edge: one more grid step beyond an edge the best sits on."""

from __future__ import annotations

import dataclasses

from ..axes import axis_of
from ..params.settings import ParamsError, round_sig
from ..results.documents import GridExtension
from ..runs.store import RunStatus
from .descent import Descent, descend
from .history import EvaluatedRun, Evaluations
from .space import SearchSpace
from .sweep_plan import SweepPlan

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


def _edge_extensions(plan: SweepPlan, space: SearchSpace, best: EvaluatedRun,
                     grown: dict[str, int]) -> list[GridExtension]:
    """For each free hyperparameter whose best value is a grid edge: the value one grid step further, when it
    is valid and the grid has grown fewer than `search.extend_edges` times at that end."""
    added = []
    for h in space.free:
        values = sorted(space.grid[h])
        if len(values) < 2 or best.status != RunStatus.OK or best.hparams[h] not in (values[0], values[-1]):
            continue
        end = "low" if best.hparams[h] == values[0] else "high"
        if grown.get(f"{h}:{end}", 0) >= plan.search.extend_edges:
            continue
        edge, neighbour = (values[0], values[1]) if end == "low" else (values[-1], values[-2])
        value = next_value_past_edge(h, edge, neighbour)
        value = int(round(value)) if h in plan.integers else value
        try:
            plan.check({h: value}, key=f"search.extend_edges: {h}")
        except ParamsError:
            continue  # past the domain (weight decay below 0, say): the edge is a real bound
        if value in values:
            continue
        grown[f"{h}:{end}"] = grown.get(f"{h}:{end}", 0) + 1
        added.append(GridExtension(hparam=h, end=end, value=value, edge=edge, edge_loss=best.loss))
    return added


def descend_following_edges(plan: SweepPlan, space: SearchSpace, runs: Evaluations, passes: int,
                            grown: dict[str, int]) -> tuple[Descent, SearchSpace, list[GridExtension]]:
    """Coordinate descent from `space.baseline` in at most `passes` passes; while the optimum sits on a grid
    edge, grow that grid by one step and descend again from the optimum (stored runs are reused), up to
    `search.extend_edges` steps per end (counted in `grown`, across calls)."""
    search = plan.search.model_copy(update={"passes": passes})
    descent = descend(space, search, runs)
    extensions: list[GridExtension] = []
    while added := _edge_extensions(plan, space, descent.best, grown):
        extensions += added
        grid = {h: sorted([*values, *(a.value for a in added if a.hparam == h)])
                for h, values in space.grid.items()}
        space = dataclasses.replace(space, grid=grid, baseline=dict(descent.best.hparams))
        # The steps past the edges are independent of each other: they go out as one batch (the descent below
        # asks for them one line at a time, and finds them run), so a shared pool trains them side by side.
        runs.evaluate([{**descent.best.hparams, a.hparam: a.value} for a in added])
        # The passes left (at least one): growing a grid continues the search, it does not restart it.
        remaining = search.model_copy(update={"passes": max(1, search.passes - descent.passes)})
        descent = descent.then(descend(space, remaining, runs))
    return descent, space, extensions
