"""One scale's search, resolved once from the params: the scale, the space, the search settings and the
identity its runs are trained and keyed with. Everything below `sweep.search_scale` reads this plan, never
the params by name, so a setting is looked up in one place and every module of the search sees the same."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..axes import axis_of
from ..optimizers import load_optimizer, resolve_hparams
from ..params.sections import Scale, SearchSettings
from ..params.settings import StudyParams
from ..params.study import LrTransfer
from ..runs.trainer import RunSpecs, code_identity, run_specs
from .space import Config, SearchSpace, search_space


@dataclasses.dataclass(frozen=True)
class SweepIdentity:
    """What a sweep's runs are trained with, as its result's provenance records it."""

    optimizer: str  # the plug-in name (optsweep.optimizers)
    trainer: str  # "module:function"
    trainer_code: str  # `code_identity(trainer)`: part of every run key
    data: dict[str, Any] | None  # the prepared shards' identity (None: a trainer that reads none)
    seed: int  # the study's seed: the sweep's own replicate
    lr_transfer: LrTransfer
    lr_factor: float  # the transfer rule's factor at this scale's width
    params_hash: str

    def provenance(self) -> dict[str, Any]:
        """What the result's provenance adds to the code version, params hash and time."""
        return {"data_hash": self.data.get("hash") if self.data else None, "trainer": self.trainer,
                "trainer_code": self.trainer_code, "seed": self.seed,
                "lr_transfer": {"rule": self.lr_transfer.rule, "reference_width": self.lr_transfer.reference_width,
                                "factor": self.lr_factor}}


@dataclasses.dataclass(frozen=True)
class SweepPlan:
    """One scale's search: built once (`sweep_plan`), then read by the evaluator, the rules and the result."""

    scale_name: str
    scale: Scale
    space: SearchSpace  # where the search starts (edges may grow its grid as it goes)
    search: SearchSettings
    order: list[str]  # the study's coordinate order (the law phase frees a subset of it)
    axes: dict[str, str]  # each hyperparameter's natural axis, as its optimizer declares it
    integers: frozenset[str]  # the hyperparameters that take whole numbers
    declared_baseline: Config  # params' baseline as written: what a config is checked against
    specs: RunSpecs
    identity: SweepIdentity
    carry_from: Path | None  # another optimizer's result at this scale, whose optimum is carried over

    @property
    def label(self) -> str:
        return f"sweep {self.scale_name}" + (" (law)" if self.space.phase == "law" else "")

    def spec(self, hparams: Config, seed: int) -> dict[str, Any]:
        """The run spec of a config on replicate `seed`: the sweep's seed, or noise seed `study.seed + i`,
        which moves the initialisation and/or the batch order by i (`search.noise_varies`)."""
        offset, varies = seed - self.identity.seed, self.search.noise_varies
        return self.specs.spec(hparams, seed=self.specs.seed + (offset if varies in ("both", "init") else 0),
                               batch_seed=self.specs.batch_seed + (offset if varies in ("both", "data_order") else 0))

    def check(self, overrides: Config, key: str) -> None:
        """Raise `ParamsError` naming `key` unless the baseline with `overrides` is in the optimizer's domain
        (as `StudyParams.hparams_with` checks it)."""
        resolve_hparams(self.identity.optimizer, {**self.declared_baseline, **overrides}, where=key)


def sweep_plan(params: StudyParams, scale_name: str, sensitivity_path: str | None, transfer_from: Path | None,
               data: dict[str, Any] | None) -> SweepPlan:
    """The plan of one scale's search (`sensitivity_path`: the law phase's inputs; `transfer_from`: a folder of
    another optimizer's sweep results; `data`: the prepared data's identity)."""
    space = search_space(params, scale_name, sensitivity_path)
    scale, study = params.scale(scale_name), params.study
    declared = load_optimizer(study.optimizer).hparams
    identity = SweepIdentity(
        optimizer=study.optimizer, trainer=study.trainer, trainer_code=code_identity(study.trainer), data=data,
        seed=study.seed, lr_transfer=study.lr_transfer, lr_factor=study.lr_transfer.factor(scale.width),
        params_hash=params.params_hash())
    return SweepPlan(
        scale_name=scale_name, scale=scale, space=space, search=params.search, order=params.coordinate_order(),
        axes={h: declared[h].axis if h in declared else axis_of(h) for h in space.baseline},
        integers=frozenset(params.integer_hparams()), declared_baseline=dict(params.baseline),
        specs=run_specs(params, scale_name, data), identity=identity,
        carry_from=transfer_from / f"{scale_name}.json" if transfer_from else None)
