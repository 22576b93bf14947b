"""The study's results: the typed documents it writes (results/*.json) and the frames a notebook reads them as.

    documents  the pydantic models of sweep results, sensitivity, scaling laws (and speedup_documents: the
               speedup), on one base with one read (validated) and one write
    metrics    the results as pandas frames (`from optsweep import results; results.sweeps()`), and the
               study's DVC metrics
"""

from .metrics import (
    StudyMetrics,
    every_optimizer,
    law_points,
    laws,
    runs,
    sensitivity,
    study_metrics,
    sweeps,
    trajectories,
)

__all__ = ["StudyMetrics", "every_optimizer", "law_points", "laws", "runs", "sensitivity", "study_metrics", "sweeps",
           "trajectories"]
