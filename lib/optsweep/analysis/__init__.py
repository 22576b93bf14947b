"""Sensitivity classification and hyperparameter scaling laws, for our sweeps and for anyone's run table.

    table = runs_table_from_sweeps(sweeps)          # or load_runs_table("runs.csv")
    sensitivity = analyze_sensitivity(table)        # a SensitivityResult: results/sensitivity.json
    laws = fit_scaling_laws(table, sensitivity)     # a ScalingLaws: results/scaling_law.json
    predict(laws, n_params=1e8, tokens=2e9, width=512)  # a Prediction: what `optsweep predict` prints
    speedup = speedup_from_sweeps({"adamw": sweeps, "muon": muon_sweeps})   # -> results/speedup.json
"""

from .analyze import analyze_table
from .laws import fit_scaling_laws
from .predict import Prediction, predict
from .sensitivity import analyze_sensitivity
from .speedup import compute_speedup
from .speedup_sweeps import speedup_from_sweeps
from .table import load_runs_table, runs_table_from_sweeps, validate_runs_table

__all__ = [
    "Prediction",
    "analyze_sensitivity",
    "analyze_table",
    "compute_speedup",
    "fit_scaling_laws",
    "load_runs_table",
    "predict",
    "runs_table_from_sweeps",
    "speedup_from_sweeps",
    "validate_runs_table",
]
