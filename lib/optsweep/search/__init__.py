"""Coordinate descent over the hyperparameter grid at each scale, as the study brief prescribes.

    space        what moves, over which grid, what is fixed, where the search starts
    sweep_plan   one scale's search resolved once from params: scale, space, settings, identity, run specs
    history      what a stop rule sees: the sweep's runs so far, and `Evaluations` (a way to run more)
    evaluator    configs into runs: the sweep's memory, the run store, else the executor (claims, heartbeat)
    descent      the stop rules: passes over the coordinates, or the original study's neighbourhoods
    edges        grids that follow an optimum past their edge
    lowest       a search that ends on the lowest of its own runs
    measurements slices through the best, runs within the tolerance, seed noise
    transfer     another optimizer's optimum carried to this sweep
    result       the search as its `SweepResult`, built from typed parts
    sweep        one scale: plan, search and result, and `run_sweep`
    phase        every scale of a phase at once on one shared pool (`run_phase`)
    plan         the study's runs, GPU-hours and calendar, before anything trains (`optsweep plan`)

All configs of a sweep share one seed (common random numbers), so loss differences come from the
hyperparameters; extra seeds on the final best and its closest competitors measure the seed noise.
"""

from .edges import next_value_past_edge
from .evaluator import RunEvaluator, outcome_record
from .history import EvaluatedRun, Evaluations, SweepHistory
from .phase import run_phase
from .space import SearchSpace, search_space
from .sweep import FailedRuns, run_sweep, study_data
from .sweep_plan import SweepIdentity, SweepPlan, sweep_plan

__all__ = ["EvaluatedRun", "Evaluations", "FailedRuns", "RunEvaluator", "SearchSpace", "SweepHistory", "SweepIdentity",
           "SweepPlan", "next_value_past_edge", "outcome_record", "run_phase", "run_sweep", "search_space",
           "study_data", "sweep_plan"]
