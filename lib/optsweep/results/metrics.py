"""The study's runs and results as tidy pandas frames, for exploring them (notebooks/explore.py) and for DVC.

Each reader takes the study's `ProjectPaths` (default: the project found from the current directory) and
returns a long table, one row per observation and one column per variable, ready for seaborn's facets:

    runs()          every run in the run store
    sweeps()        every run each sweep result evaluated, both phases
    trajectories()  the incumbent after each coordinate step of each search
    sensitivity()   each hyperparameter's verdict and its optimum at each scale
    laws()          each fitted law's coefficients with their 95% intervals
    law_points()    the optima each law was fitted on

Each reads one optimizer's study: the study's own by default, another one's (params `optimizers`) with
`paths.of_optimizer(name)`; `every_optimizer(sweeps)` stacks a reader's frames of every optimizer compared,
told apart by their `optimizer` column.

`study_metrics()` condenses the results into the few numbers `dvc metrics show` / `dvc metrics diff` compare.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
from pydantic import BaseModel

from ..params.paths import PHASES, ProjectPaths, project
from ..params.settings import ParamsError, load_params
from ..runs.store import RunStore
from .documents import (
    DocumentType,
    ScaleRecord,
    ScalingLaws,
    SensitivityResult,
    SweepResult,
    read_document,
)

SCALE_COLUMNS = ("width", "depth", "n_params", "tokens", "steps")


def _read(path: Path, kind: type[DocumentType]) -> DocumentType:
    """A results document, validated (`read_document`); a missing file says which stage writes it."""
    if not path.is_file():
        raise ParamsError(f"{path}: results file not found (run `make repro`, or the stage that writes it)")
    return read_document(path, kind)


def _scale_columns(scale: ScaleRecord) -> dict[str, object]:
    return {"scale": scale.get("name"), **{column: scale.get(column) for column in SCALE_COLUMNS}}


def _optimizer_column(paths: ProjectPaths, document: SweepResult | SensitivityResult | ScalingLaws) -> dict[str, str]:
    """The optimizer a results file belongs to: the params key of another optimizer's study, else the plug-in
    the document records (the study's own: "adamw" unless params say otherwise)."""
    extra = document.model_extra or {}
    recorded = document.optimizer if isinstance(document, SweepResult) else extra.get("optimizer")
    return {"optimizer": paths.optimizer or recorded or "adamw"}


def every_optimizer(reader: Callable[[ProjectPaths], pd.DataFrame], paths: ProjectPaths | None = None) -> pd.DataFrame:
    """`reader`'s frames of the study's own optimizer and of every other one the params compare it with
    (those with a results folder so far), stacked; e.g. `every_optimizer(results.sweeps)`. A file reader
    (sensitivity, laws) raises as it does alone when one of them lacks its file."""
    paths = paths or project()
    studies = [paths, *(paths.of_optimizer(name) for name in load_params(paths.params).optimizers)]
    frames = [reader(study) for study in studies if study.results.is_dir()]
    return pd.concat([frame for frame in frames if not frame.empty], ignore_index=True) if frames else pd.DataFrame()


def runs(paths: ProjectPaths | None = None) -> pd.DataFrame:
    """Every run in the study's run store (`study.store`): whatever sweep or command trained it."""
    paths = paths or project()
    store = RunStore(paths.under_root(load_params(paths.params).study.store))
    rows = [
        {
            "key": record.key,
            "optimizer": record.spec.get("optimizer", {}).get("name"),
            **_scale_columns(record.spec.get("scale", {})),
            "seed": record.spec.get("seed"),
            **record.spec.get("hparams", {}),  # its optimizer's names
            "status": record.status,
            "loss": record.loss,
            "wall_s": record.wall_s,
            "tokens_per_s": (record.result or {}).get("tokens_per_s"),
            "trainer": record.trainer,
            "created": pd.Timestamp(record.created),
        }
        for record in store
    ]
    return pd.DataFrame(rows)


def _sweep_files(paths: ProjectPaths) -> list[tuple[str, SweepResult]]:
    return [(phase, _read(file, SweepResult))
            for phase in PHASES for file in sorted(paths.sweeps(phase).glob("*.json"))]


def sweeps(paths: ProjectPaths | None = None) -> pd.DataFrame:
    """Every run evaluated by every sweep result file; `delta_loss` is the loss above that sweep's best."""
    paths = paths or project()
    rows = []
    for phase, sweep in _sweep_files(paths):
        for run in sweep.runs:
            rows.append({
                **_optimizer_column(paths, sweep),
                "phase": phase,
                **_scale_columns(sweep.scale),
                "key": run.key,
                "seed": run.seed,
                **run.hparams,  # its optimizer's names; another's are NaN
                "status": str(run.status),
                "loss": run.loss,
                "best": run.hparams == sweep.best and run.loss == sweep.best_loss,
                "delta_loss": None if run.loss is None or sweep.best_loss is None else run.loss - sweep.best_loss,
            })
    frame = pd.DataFrame(rows)
    for column in ("loss", "delta_loss"):
        if column in frame:
            frame[column] = pd.to_numeric(frame[column])
    return frame


def trajectories(paths: ProjectPaths | None = None) -> pd.DataFrame:
    """The incumbent after each coordinate step of each search: the hyperparameter just swept, its value."""
    paths = paths or project()
    rows = [
        {
            **_optimizer_column(paths, sweep),
            "phase": phase,
            **_scale_columns(sweep.scale),
            "step": step,
            "pass": point.pass_number,
            "hparam": point.hparam,
            "value": point.baseline[point.hparam],
            "loss": point.loss,
        }
        for phase, sweep in _sweep_files(paths)
        for step, point in enumerate(sweep.trajectory, start=1)
    ]
    return pd.DataFrame(rows)


def sensitivity(paths: ProjectPaths | None = None) -> pd.DataFrame:
    """One row per (hyperparameter, phase-1 scale): the verdicts and that scale's optimum."""
    paths = paths or project()
    document = _read(paths.sensitivity, SensitivityResult)
    rows = [
        {
            **_optimizer_column(paths, document),
            "hparam": hparam,
            "sensitive": verdict.sensitive,
            "loss_sensitive": verdict.loss_sensitive,
            "optimum_shifts": verdict.optimum_shifts,
            "shift_cause": verdict.shift_cause,
            "scale": scale,
            "optimum": optimum.refined,
            "grid_value": optimum.grid_value,
            "at_edge": optimum.at_edge,
            "loss": optimum.loss,
        }
        for hparam, verdict in document.hyperparameters.items()
        for scale, optimum in verdict.optimum.items()
    ]
    return pd.DataFrame(rows)


def laws(paths: ProjectPaths | None = None) -> pd.DataFrame:
    """One row per (sensitive hyperparameter, coefficient) of the fitted laws, with its 95% interval."""
    paths = paths or project()
    document = _read(paths.scaling_law, ScalingLaws)
    rows = [
        {
            **_optimizer_column(paths, document),
            "hparam": hparam,
            "form": law.form,
            "coefficient": name,
            "estimate": coefficient.estimate,
            "ci_low": coefficient.ci95[0],
            "ci_high": coefficient.ci95[1],
            "r2": law.r2,
            "n_points": law.n_points,
        }
        for hparam, law in document.laws.items()
        for name, coefficient in law.coefficients.items()
    ]
    return pd.DataFrame(rows)


def law_points(paths: ProjectPaths | None = None) -> pd.DataFrame:
    """One row per (sensitive hyperparameter, scale): the optimum a law was fitted on, and its residual."""
    paths = paths or project()
    document = _read(paths.scaling_law, ScalingLaws)
    optimizer = _optimizer_column(paths, document)
    return pd.DataFrame([{**optimizer, "hparam": hparam, **point.model_dump(mode="json")}
                         for hparam, law in document.laws.items() for point in law.points])


# --- metrics for DVC ------------------------------------------------------------------------------------------


class StudyMetrics(BaseModel):
    """The study's headline numbers (results/metrics.json, declared as DVC metrics)."""

    best_loss: dict[str, float | None]  # per scale, both phases; None when every run diverged
    sensitive: dict[str, bool]  # per hyperparameter the sensitivity analysis judged
    law_exponents: dict[str, dict[str, float]]  # per fitted law: "N" / "D" / "C" -> exponent


def study_metrics(sweep_results: Sequence[SweepResult], sensitivity_document: SensitivityResult,
                  laws_document: ScalingLaws) -> StudyMetrics:
    """The metrics of one study from its sweep results, sensitivity.json and scaling_law.json."""
    return StudyMetrics(
        best_loss={str(sweep.scale["name"]): sweep.best_loss for sweep in sweep_results},
        sensitive={hparam: verdict.sensitive for hparam, verdict in sensitivity_document.hyperparameters.items()},
        law_exponents={
            hparam: {
                name.removesuffix("_exponent"): coefficient.estimate
                for name, coefficient in law.coefficients.items()
                if name.endswith("_exponent")
            }
            for hparam, law in laws_document.laws.items()
        },
    )
