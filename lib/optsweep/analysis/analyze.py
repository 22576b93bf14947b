"""`optsweep analyze`: a run table in, sensitivity.json and scaling_law.json out."""

from __future__ import annotations

from pathlib import Path

from ..config import AnalysisSettings, StudyParams
from ..documents import ScalingLaws, SensitivityResult, stamped, write_document
from ..provenance import stable_hash
from .laws import fit_scaling_laws
from .sensitivity import analyze_sensitivity
from .table import load_runs_table


def analyze_table(
    path: str | Path, out_dir: Path, params: StudyParams | None = None, settings: AnalysisSettings | None = None
) -> list[Path]:
    """Validate a CSV/Parquet run table, run both analyses and write their JSON files; returns the paths.
    The settings come from `settings`, else from `params.analysis`, else the defaults."""
    table = load_runs_table(path)
    settings = settings or (params.analysis if params else AnalysisSettings())
    sensitivity = analyze_sensitivity(table, settings)
    laws = fit_scaling_laws(table, sensitivity, settings=settings)
    params_hash = params.params_hash() if params else stable_hash(settings.model_dump())
    origin = {"runs_table": str(path), "table_hash": stable_hash(table.to_dict("list"))}
    out_dir = Path(out_dir)
    return [
        write_document(out_dir / "sensitivity.json", stamped(SensitivityResult, sensitivity, params_hash, **origin)),
        write_document(out_dir / "scaling_law.json", stamped(ScalingLaws, laws, params_hash, **origin)),
    ]
