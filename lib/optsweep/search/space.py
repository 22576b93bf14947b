"""The search space of one scale: which hyperparameters move, over which grid, what is fixed, where it starts.

Phase 1 frees the study's search order; the law phase frees what the sensitivity analysis found sensitive
(and what `analysis.laws_for` asks a law of), with every other hyperparameter at its recommended constant.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from ..params.settings import ParamsError, StudyParams, round_sig
from ..params.study import LrTransfer
from ..results.documents import LawPhaseInputs, RecommendedConstant, read_document

Config = dict[str, float | int]


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    phase: Literal["phase1", "law"]
    free: list[str]  # in the order the coordinates are visited
    grid: dict[str, list[float | int]]  # effective values of the free hyperparameters at this scale
    fixed: Config  # every other hyperparameter
    baseline: Config  # where the search starts: fixed values plus the scale's baseline for the free ones


def search_space(params: StudyParams, scale_name: str, sensitivity_path: str | None) -> SearchSpace:
    baseline, grid = params.scale_space(scale_name)
    if sensitivity_path is None:
        free = params.search_order()
        fixed = {h: v for h, v in baseline.items() if h not in free}
        return SearchSpace("phase1", free, {h: grid[h] for h in free}, fixed, baseline)
    document = _read_sensitivity(Path(sensitivity_path), params.hparam_names())
    sensitive, unjudged, recommended = document.sensitive, document.unjudged, document.recommended
    # A law asked for under analysis.laws_for needs its optimum measured at the law scales too.
    free = [h for h in params.coordinate_order() if h in sensitive or h in params.analysis.laws_for]
    width = params.scale(scale_name).width
    integers = params.integer_hparams()
    fixed = {h: v for h, v in baseline.items() if h not in free}
    # Sensitive without a grid, or unjudged by the analysis (never swept): no constant exists, keep the baseline.
    for h in sorted(set(baseline) - set(free) - set(sensitive) - set(unjudged)):
        if h not in recommended:
            raise ParamsError(f"{sensitivity_path}: recommended: missing hyperparameter {h!r}")
    for h, entry in recommended.items():
        if h not in free:
            fixed[h] = _recommended_value(sensitivity_path, h, entry, width, h in integers)
    start = {**fixed, **{h: baseline[h] for h in free}}
    params.hparams_with(start, key=f"{sensitivity_path}: recommended")
    return SearchSpace("law", free, {h: grid[h] for h in free}, fixed, start)


def _read_sensitivity(path: Path, hparams: list[str]) -> LawPhaseInputs:
    """The sensitive and unjudged hyperparameters and the recommended constants of a sensitivity.json."""
    if not path.is_file():
        raise ParamsError(f"{path}: sensitivity file not found (run the sensitivity stage or `optsweep analyze`)")
    document = read_document(path, LawPhaseInputs)
    unknown = sorted(set(document.recommended) - set(hparams))
    if unknown:
        raise ParamsError(f"{path}: recommended: unknown hyperparameter {unknown[0]!r}; allowed: {', '.join(hparams)}")
    return document


def _recommended_value(path: str, h: str, entry: RecommendedConstant, width: int, integer: bool) -> float | int:
    """A recommended constant at this width: value x the transfer factor of its rule."""
    if entry.value is None:
        raise ParamsError(f"{path}: recommended.{h}.value: expected a number, got None")
    try:
        transfer = LrTransfer(rule=entry.rule, reference_width=entry.reference_width)
    except ValidationError as error:
        first = error.errors()[0]
        raise ParamsError(f"{path}: recommended.{h}: {first['msg'].removeprefix('Value error, ')}") from None
    moved = round_sig(entry.value * transfer.factor(width))
    return int(round(moved)) if integer else moved
