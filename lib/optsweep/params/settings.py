"""Study parameters: the one place where a params file is read, validated and its derived values computed.

Every user-facing error here is a `ParamsError` whose message is one line naming the file, the key and
what is allowed, so that bad input fails before any data is prepared or any run is trained.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from ..errors import ParamsError
from ..optimizers import OPTIONAL_HPARAMS, load_optimizer, resolve_hparams
from ..provenance import stable_hash
from .sections import AnalysisSettings, Hparams, OptimizerStudy, Scale, SearchSettings
from .study import ALL_HPARAMS, SCALE_NAME, Strict, StudySettings


class StudyParams(Strict):
    study: StudySettings
    scales: dict[str, Scale]
    law_scales: dict[str, Scale] = Field(default_factory=dict)
    baseline: dict[str, float | int]
    grid: dict[str, list[float]]
    search: SearchSettings = Field(default_factory=SearchSettings)
    analysis: AnalysisSettings = Field(default_factory=AnalysisSettings)
    optimizers: dict[str, OptimizerStudy] = Field(
        default_factory=dict, description="other optimizers tuned the same way and compared with the study's"
    )

    @field_validator("scales")
    @classmethod
    def _at_least_one(cls, scales: dict[str, Scale]) -> dict[str, Scale]:
        if not scales:
            raise ValueError("needs at least 1 phase-1 scale")
        return scales

    @field_validator("scales", "law_scales", "optimizers")
    @classmethod
    def _names(cls, entries: dict[str, Any]) -> dict[str, Any]:
        for name in entries:  # they name files, folders and DVC stages
            if not SCALE_NAME.fullmatch(name):
                raise ValueError(f"name {name!r} must be letters, digits, '_', '-' or '.'")
        return entries

    @field_validator("grid")
    @classmethod
    def _grid_values(cls, grid: dict[str, list[float]]) -> dict[str, list[float]]:
        for name, values in grid.items():
            if not values:
                raise ValueError(f"{name}: empty grid; give at least one value")
            if len(set(values)) != len(values):
                raise ValueError(f"{name}: repeated grid values {values}")
        return grid

    @model_validator(mode="after")
    def _cross_checks(self) -> StudyParams:
        shared = set(self.scales) & set(self.law_scales)
        if shared:
            raise ValueError(f"scale {sorted(shared)[0]!r} is in both 'scales' and 'law_scales'")
        warmup = self.hparams_with({}, key="baseline")["warmup"]
        for name, values in self.grid.items():
            for value in values:
                self.hparams_with({name: value}, key=f"grid.{name}")
        for key in ("order", "free"):
            for name in getattr(self.search, key) or []:
                if name not in self.grid:
                    raise ValueError(f"search.{key}: {name!r} has no grid; grid has: {', '.join(self.grid)}")
        if not self.grid:
            raise ValueError(f"grid: empty; give a list of values for at least one of {', '.join(self.hparam_names())}")
        if not self.search_order():
            names = ", ".join(self.grid)
            raise ValueError(f"search: 'order' and 'free' leave nothing to search; name some of: {names}")
        for name, scale in self.all_scales().items():
            self._check_micro_batch(name, scale)
            steps = scale.steps(self.baseline.get("batch_size"))
            if warmup >= steps:
                raise ValueError(f"baseline.warmup ({warmup}) must be shorter than the {steps} steps of scale {name!r}")
        names = set(self.hparam_names())
        for name in self.optimizers:
            names.update(self.for_optimizer(name).hparam_names())
        for name in self.analysis.laws_for:
            if name not in names:
                allowed = ", ".join(sorted(names))
                raise ValueError(f"analysis.laws_for: unknown hyperparameter {name!r}; allowed: {allowed}")
        return self

    def _check_micro_batch(self, name: str, scale: Scale) -> None:
        """The micro-batch must divide every batch size this scale trains with (gradients accumulate)."""
        micro = scale.micro_batch_size or self.study.train.micro_batch_size
        if micro is None:
            return
        key = f"scales.{name}.micro_batch_size" if scale.micro_batch_size else "study.train.micro_batch_size"
        batches = {scale.batch_size, *(int(b) for b in self.grid.get("batch_size", []))}
        if self.baseline.get("batch_size"):
            batches.add(int(self.baseline["batch_size"]))
        for batch in sorted(batches):
            if batch % micro:
                raise ValueError(f"{key}: {micro} does not divide the batch size {batch} of scale {name!r}")

    def params_hash(self) -> str:
        return stable_hash(self.model_dump(mode="json"))

    def all_scales(self) -> dict[str, Scale]:
        return {**self.scales, **self.law_scales}

    def phase_scales(self, phase: str) -> dict[str, Scale]:
        """The scales swept in one phase: `scales` ("phase1") or `law_scales` ("law")."""
        if phase not in ("phase1", "law"):
            raise ParamsError(f"phase {phase!r}: allowed: phase1 (every hyperparameter free), law (the sensitive ones)")
        return self.scales if phase == "phase1" else self.law_scales

    def first_scale(self, phase: str) -> str:
        """The scale a phase's sweep runs when none is named."""
        scales = self.phase_scales(phase)
        if not scales:
            key = "scales" if phase == "phase1" else "law_scales"
            raise ParamsError(f"{key}: empty; no scale to sweep in phase {phase!r}")
        return next(iter(scales))

    def scales_to_compare(self) -> list[str]:
        """The phase-1 scales the sensitivity analysis compares: it needs two (a single scale still sweeps)."""
        if len(self.scales) < 2:
            raise ParamsError(
                f"scales: the sensitivity analysis compares phase-1 scales and needs at least 2, got {len(self.scales)}"
            )
        return list(self.scales)

    def scale(self, name: str) -> Scale:
        scales = self.all_scales()
        if name not in scales:
            raise ParamsError(f"unknown scale {name!r}; allowed: {', '.join(scales)}")
        return scales[name]

    def hparam_names(self) -> list[str]:
        """Every hyperparameter of the study's optimizer, then `batch_size`."""
        return hparam_names_of(self.study.optimizer)

    def hparams_with(self, overrides: dict[str, Any], key: str = "hparams") -> Hparams:
        """The baseline with some hyperparameters replaced, the rest at the optimizer's defaults, validated
        against its declarations (raises ParamsError naming `key`, the optimizer and the hyperparameter)."""
        return resolve_hparams(self.study.optimizer, {**self.baseline, **overrides}, where=key)

    def for_optimizer(self, name: str | None) -> StudyParams:
        """The study of another optimizer named in `optimizers` (None or "": this study): the same scales,
        data, seeds, search settings and run store, with that optimizer's baseline, grid and order."""
        if not name:
            return self
        if name not in self.optimizers:
            named = ", ".join(self.optimizers) or "none"
            raise ParamsError(f"optimizers: no optimizer {name!r}; params name: {named}")
        other = self.optimizers[name]
        raw = self.model_dump(mode="json", exclude={"optimizers"})
        raw["study"]["optimizer"] = other.optimizer or name
        raw["baseline"], raw["grid"] = other.baseline, other.grid
        raw["search"].update(order=other.order, free=other.free)
        names = hparam_names_of(raw["study"]["optimizer"])  # laws asked for names this optimizer has
        raw["analysis"]["laws_for"] = [h for h in self.analysis.laws_for if h in names]
        return validate_params(raw, source=f"optimizers.{name}")

    def scale_space(self, name: str) -> tuple[dict[str, float | int], dict[str, list[float | int]]]:
        """The baseline and grid at one scale, with lr moved from the reference width by the transfer rule.

        Everything downstream (run specs, the run store, results, analysis) sees these effective values.
        """
        factor = self.study.lr_transfer.factor(self.scale(name).width)
        baseline = self.hparams_with({}, key="baseline")
        grid = {h: list(values) for h, values in self.grid.items()}
        baseline["lr"] = round_sig(baseline["lr"] * factor)
        if "lr" in grid:
            grid["lr"] = [round_sig(v * factor) for v in grid["lr"]]
        integers = self.integer_hparams()
        for h in grid:
            if h in integers:
                grid[h] = [int(v) for v in grid[h]]
        return baseline, grid

    def integer_hparams(self) -> list[str]:
        """The hyperparameters that take whole numbers (warmup, batch_size, ...)."""
        declared = load_optimizer(self.study.optimizer).hparams
        return [h for h, hparam in declared.items() if hparam.integer] + list(OPTIONAL_HPARAMS)

    def coordinate_order(self) -> list[str]:
        """The one order in which coordinate descent visits hyperparameters: `search.order`, else every grid
        entry in the canonical order of `ALL_HPARAMS` (AdamW's names), then the others in the grid's order."""
        return self.search.order or [*(h for h in ALL_HPARAMS if h in self.grid),
                                     *(h for h in self.grid if h not in ALL_HPARAMS)]

    def search_order(self) -> list[str]:
        """The phase-1 coordinates: the coordinate order, restricted to `search.free` when given."""
        free = self.search.free
        return [h for h in self.coordinate_order() if free is None or h in free]


def hparam_names_of(optimizer: str) -> list[str]:
    """Every hyperparameter an optimizer plug-in declares, then `batch_size`."""
    return [*load_optimizer(optimizer, "study.optimizer").hparams, *OPTIONAL_HPARAMS]


def round_sig(value: float, digits: int = 6) -> float:
    """`value` to `digits` significant digits (so 1e-2 * 0.5 prints as 0.005, not 0.005000000000000001)."""
    return float(f"{value:.{digits}g}")


# --- loading ----------------------------------------------------------------------------------------------


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if first["type"] == "missing":
        message = "missing required key"
    got = first.get("input")
    if first["type"] not in ("missing", "value_error") and not isinstance(got, dict):
        message += f" (got {got!r})"
    return f"{where}: {message}" if where else message


def validate_params(raw: dict[str, Any], source: str = "params") -> StudyParams:
    """Validate a params mapping; any problem becomes one `ParamsError` line naming `source` and the key."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping with keys {', '.join(StudyParams.model_fields)}")
    try:
        return StudyParams(**raw)
    except ValidationError as error:
        raise ParamsError(f"{source}: {_first_error(error)}") from None
    except ValueError as error:
        raise ParamsError(f"{source}: {error}") from None


def read_params_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None


def apply_overrides(raw: dict[str, Any], assignments: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Apply `key=value` assignments (values parsed as YAML).

    A bare hyperparameter name (`lr=3e-3`) overrides the run's hyperparameters and is returned separately;
    a dotted path (`study.seed=1`, `scales.a.tokens=100000`) edits the params mapping.
    """
    raw = copy.deepcopy(raw)
    hparams: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key:
            raise ParamsError(f"--set {assignment!r}: expected key=value")
        value = yaml.safe_load(text)
        if "." not in key:  # checked against the optimizer's declared names when the params are validated
            hparams[key] = value
            continue
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ParamsError(f"--set {key}: {part!r} is not a section of the params file")
            node = node[part]
        node[leaf] = value
    return raw, hparams


def load_params(path: str | Path, assignments: list[str] | None = None, optimizer: str | None = None) -> StudyParams:
    """Read, override and validate a params file; with `optimizer`, the study of that optimizer in
    `optimizers` (bare hyperparameter overrides then apply to its baseline)."""
    raw, hparams = apply_overrides(read_params_file(path), assignments or [])
    if hparams:
        entry = raw.get("optimizers", {}).get(optimizer) if optimizer else raw
        if not isinstance(entry, dict):
            raise ParamsError(f"{path}: optimizers: no optimizer {optimizer!r} to override {', '.join(hparams)} of")
        entry["baseline"] = {**entry.get("baseline", {}), **hparams}
    return validate_params(raw, source=str(path)).for_optimizer(optimizer)


def load_analysis_settings(path: str | Path) -> AnalysisSettings:
    """The analysis settings from a whole study params file or from a file holding only an `analysis:` mapping."""
    raw = read_params_file(path)
    if not isinstance(raw, dict) or "analysis" not in raw:
        raise ParamsError(f"{path}: expected an 'analysis:' mapping (alone, or in a whole study params file)")
    if set(raw) != {"analysis"}:
        return load_params(path).analysis
    try:
        return AnalysisSettings(**(raw["analysis"] or {}))
    except ValidationError as error:
        raise ParamsError(f"{path}: analysis.{_first_error(error)}") from None
    except TypeError:
        raise ParamsError(f"{path}: analysis: expected a mapping of settings") from None
