"""The study results committed with the repository hold what the code promises of any result."""

from __future__ import annotations

from pathlib import Path

import pytest

from optsweep.results.documents import SweepResult, read_document

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted((REPO / "results").glob("**/*sweeps/*.json"))


def test_the_default_study_committed_its_sweeps():
    assert len(SWEEPS) >= 2


@pytest.mark.parametrize("path", SWEEPS, ids=[str(path.relative_to(REPO)) for path in SWEEPS])
def test_every_committed_sweep_ends_on_the_lowest_of_its_runs_and_measured_its_seed_noise(path: Path):
    result = read_document(path, SweepResult)
    assert result.runs_beating_best() == []
    assert result.noise is not None and result.noise.std is not None
    assert result.converged or result.why_not_converged
