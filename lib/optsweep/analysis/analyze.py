"""`optsweep analyze`: a run table in, sensitivity.json and scaling_law.json out (and, when the table has an
`optimizer` column, each optimizer's analysis and their speedup over the reference).

    DIR/sensitivity.json, DIR/scaling_law.json                  the reference optimizer's (or the only one's)
    DIR/optimizers/<name>/sensitivity.json, .../scaling_law.json  every other optimizer's
    DIR/speedup.json                                              compute_speedup over the whole table
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ..params.sections import AnalysisSettings
from ..params.settings import ParamsError, StudyParams
from ..provenance import stable_hash
from ..results.documents import Provenance, ScalingLaws, SensitivityResult, write_document
from .laws import fit_scaling_laws
from .sensitivity import analyze_sensitivity
from .speedup import REFERENCE, compute_speedup, measured_relative_noise
from .table import read_runs_table, split_by_optimizer, validate_runs_table


def analyze_table(
    path: str | Path, out_dir: Path, params: StudyParams | None = None, settings: AnalysisSettings | None = None,
    reference: str = REFERENCE,
) -> list[Path]:
    """Validate a CSV/Parquet run table, run both analyses and write their JSON files; returns the paths.
    The settings come from `settings`, else from `params.analysis`, else the defaults. With an `optimizer`
    column, each optimizer is analysed on its own rows (`reference`'s into `out_dir`, the others' into
    `out_dir/optimizers/<name>/`) and their speedups over `reference` go to `out_dir/speedup.json`."""
    frame = read_runs_table(path)
    settings = settings or (params.analysis if params else AnalysisSettings())
    params_hash = params.params_hash() if params else stable_hash(settings.model_dump())
    out_dir = Path(out_dir)
    if "optimizer" not in frame.columns:
        return analyze_one(validate_runs_table(frame, source=str(path)), out_dir, settings, params_hash,
                           runs_table=str(path))
    tables = split_by_optimizer(frame, source=str(path))
    if reference not in tables:
        raise ParamsError(f"{path}: column 'optimizer': no run of the reference {reference!r}; "
                          f"found {', '.join(tables)}")
    order = [reference, *(name for name in tables if name != reference)]
    documents = {name: analyzed(tables[name], settings, params_hash, runs_table=str(path), optimizer=name)
                 for name in order}
    relative_noise = {name: measured_relative_noise(sensitivity) for name, (sensitivity, _) in documents.items()}
    speedup = compute_speedup(frame, reference, source=str(path), **settings.speedup_options(relative_noise)).stamped(
        params_hash, runs_table=str(path), table_hash=stable_hash(frame.to_dict("list"))
    )
    written = []
    for name in order:
        written += write_analysis(documents[name], out_dir if name == reference else out_dir / "optimizers" / name)
    return [*written, speedup.write(out_dir / "speedup.json")]


def analyze_one(
    table: pd.DataFrame, out_dir: Path, settings: AnalysisSettings, params_hash: str, **origin: Any
) -> list[Path]:
    """sensitivity.json and scaling_law.json of one validated run table, in `out_dir`."""
    return write_analysis(analyzed(table, settings, params_hash, **origin), out_dir)


def analyzed(
    table: pd.DataFrame, settings: AnalysisSettings, params_hash: str, **origin: Any
) -> tuple[SensitivityResult, ScalingLaws]:
    """The sensitivity and scaling-law documents of one validated run table (one provenance: one table, one
    command)."""
    provenance = Provenance.now(params_hash, **origin, table_hash=stable_hash(table.to_dict("list")))
    sensitivity = analyze_sensitivity(table, settings, provenance=provenance)
    return sensitivity, fit_scaling_laws(table, sensitivity, settings=settings, provenance=provenance)


def write_analysis(documents: tuple[SensitivityResult, ScalingLaws], out_dir: Path) -> list[Path]:
    sensitivity, laws = documents
    return [write_document(out_dir / "sensitivity.json", sensitivity),
            write_document(out_dir / "scaling_law.json", laws)]
