"""The stop rules see only a history and an evaluate call (`search.history.Evaluations`): a loss surface with no
run store, executor or params drives them, and the sweep's plan is resolved once from the params."""

from __future__ import annotations

from pathlib import Path

import pytest

import optsweep.testing.trainers as synth
from optsweep.params.sections import SearchSettings
from optsweep.params.settings import ParamsError, load_params
from optsweep.runs.store import RunStatus
from optsweep.runs.trainer import make_run_spec
from optsweep.search import EvaluatedRun, SearchSpace, SweepHistory, sweep_plan
from optsweep.search.descent import descend

BOWL_OPTIMUM = {"lr": 1e-2, "weight_decay": 0.2, "beta2": 0.99}
BASELINE = {"lr": 3e-3, "weight_decay": 0.1, "beta2": 0.95}
GRID = {"lr": [1e-3, 3e-3, 1e-2, 3e-2], "weight_decay": [0.0, 0.1, 0.2], "beta2": [0.9, 0.95, 0.99]}


class Surface:
    """`Evaluations` on a known loss surface: each config is evaluated once, on the spot."""

    def __init__(self) -> None:
        self.history = SweepHistory(seed=0)
        self.evaluated = 0

    def evaluate(self, configs: list[dict], seeds: list[int] | None = None) -> list[EvaluatedRun]:
        pairs = [(dict(config), seed) for config in configs for seed in seeds or [0]]
        self.history.ask(pairs)
        for hparams, seed in pairs:
            if self.history.get(hparams, seed) is None:
                self.evaluated += 1
                self.history.add(EvaluatedRun(f"run-{self.evaluated}", hparams, seed, RunStatus.OK,
                                              synth.bowl_loss(hparams)))
        return [self.history.get(hparams, seed) for hparams, seed in pairs]

    def prefetch(self, configs: list[dict]) -> None:
        """Nothing runs ahead on a surface."""


@pytest.mark.parametrize("stop_rule", ["pass", "neighbourhood"])
def test_a_stop_rule_needs_only_a_history_and_an_evaluate_call(stop_rule):
    space = SearchSpace("phase1", list(GRID), GRID, {}, BASELINE)
    surface = Surface()
    descent = descend(space, SearchSettings(passes=5, stop_rule=stop_rule), surface)
    assert descent.best.hparams == BOWL_OPTIMUM
    assert descent.converged and descent.best.loss == pytest.approx(3.0)
    assert surface.evaluated == len(surface.history.ordered_runs())  # nothing asked for twice was run twice


def test_the_plan_resolves_the_scale_identity_and_replicate_specs_once(tmp_path: Path):
    params = load_params(synth.write_study(tmp_path, "bowl", search={"noise_varies": "init", "noise_seeds": 1},
                                           study_lr_transfer={"rule": "inverse_width", "reference_width": 64}))
    plan = sweep_plan(params, "a", None, tmp_path / "adamw", None)
    assert (plan.scale_name, plan.space.phase, plan.identity.lr_factor) == ("a", "phase1", 2.0)
    assert plan.carry_from == tmp_path / "adamw" / "a.json"
    baseline = plan.space.baseline
    assert plan.spec(baseline, 0) == make_run_spec(params, "a", baseline, None)
    noise = plan.spec(baseline, 1)  # a noise seed that moves the initialisation only
    assert (noise["seed"], noise["batch_seed"]) == (params.study.seed + 1, params.study.data.seed)
    plan.check({"weight_decay": 0.3}, key="here")
    with pytest.raises(ParamsError, match="here"):
        plan.check({"weight_decay": -1.0}, key="here")
