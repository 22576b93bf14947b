"""The analysis notebooks and the report on a study whose truth is known (a synthetic scaling surface).

The sweeps run in-process on the `scaling` trainer (lr optimum moving as Step Law says, weight decay
fixed); the sensitivity, scaling-law and report notebooks then run through papermill as in the pipeline.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from optsweep.config import load_params
from optsweep.search import run_sweep
from synthetic_trainers import cli_env, write_study

REPO = Path(__file__).resolve().parents[1]
OPTSWEEP = str(Path(sys.executable).parent / "optsweep")
pytestmark = pytest.mark.slow

SCALES = {  # (width, depth, tokens): the brief's shape (N, D), (N, 5D), (~8N, D)
    "n1d1": (32, 1, 16384), "n1d5": (32, 1, 81920), "n8d1": (64, 2, 16384),
}
LAW_SCALES = {"n1d2": (32, 1, 32768), "n3d3": (48, 2, 49152), "n8d4": (64, 2, 65536), "n3d1": (48, 2, 16384)}


def _scale(width: int, depth: int, tokens: int) -> dict:
    return {"width": width, "depth": depth, "heads": 2, "seq_len": 32, "batch_size": 8, "tokens": tokens}


def _notebook(name: str, cwd: Path, page: str | None = None) -> None:
    done = subprocess.run(
        [OPTSWEEP, "notebook", f"{REPO}/notebooks/{name}.py", "--html", f"reports/{page or name}.html"],
        cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("known_truth")
    params_file = write_study(
        root, "scaling",
        scales={name: _scale(*shape) for name, shape in SCALES.items()},
        law_scales={name: _scale(*shape) for name, shape in LAW_SCALES.items()},
        grid={"lr": [2e-3 * 2**i for i in range(7)], "weight_decay": [0.0, 0.1, 0.2]},
    )
    (root / "params").mkdir()
    params_file.rename(root / "params/study.yaml")
    params = load_params(root / "params/study.yaml")
    for name in SCALES:
        run_sweep(params, name, root / f"results/sweeps/{name}.json", progress=False)
    _notebook("sensitivity", root)
    for name in LAW_SCALES:
        run_sweep(params, name, root / f"results/law_sweeps/{name}.json",
                  sensitivity_path=str(root / "results/sensitivity.json"), progress=False)
    _notebook("scaling_law", root)
    _notebook("report", root, page="index")
    return root


def test_sensitivity_notebook_finds_the_moving_lr_and_the_fixed_weight_decay(study: Path):
    sensitivity = json.loads((study / "results/sensitivity.json").read_text())
    assert sensitivity["sensitive"] == ["lr"]
    assert sensitivity["hyperparameters"]["lr"]["shift_cause"] == "both"
    assert sensitivity["recommended"]["weight_decay"]["value"] == 0.1


def test_law_sweeps_move_only_the_sensitive_lr(study: Path):
    for name in LAW_SCALES:
        sweep = json.loads((study / f"results/law_sweeps/{name}.json").read_text())
        assert sweep["free"] == ["lr"] and sweep["fixed"]["weight_decay"] == 0.1


def test_scaling_law_notebook_recovers_the_lr_exponents(study: Path):
    law = json.loads((study / "results/scaling_law.json").read_text())["laws"]["lr"]
    coefficients = {name: c["estimate"] for name, c in law["coefficients"].items()}
    n_exponent = next(v for k, v in coefficients.items() if "N" in k)
    d_exponent = next(v for k, v in coefficients.items() if "D" in k)
    assert n_exponent == pytest.approx(-0.713, abs=0.03)
    assert d_exponent == pytest.approx(0.307, abs=0.03)


def test_report_shows_the_law_with_its_figure(study: Path):
    report = (study / "reports/index.html").read_text()
    assert len(re.findall(r"<img[^>]+data:image/png;base64", report)) >= 2  # loss slices + the lr law
    assert "Recommended hyperparameters" in report and "N^-0.7" in report
