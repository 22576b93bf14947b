"""The analysis notebooks and the report on a study whose truth is known (a synthetic scaling surface).

The sweeps run in-process on the `scaling` trainer (lr optimum moving as Step Law says, weight decay
fixed); the sensitivity, scaling-law and report notebooks then run through papermill as in the pipeline.
A copy of that study then compares another optimizer with it: its sweep results are the study's own,
relabelled and uniformly better, and results/speedup.json comes from `compute_speedup` on a synthetic table.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from optsweep import results
from optsweep.analysis.speedup import SpeedupResult, compute_speedup
from optsweep.params.paths import project
from optsweep.params.settings import load_params
from optsweep.report import Comparison, tuned_hparams_frame
from optsweep.results.documents import SweepResult, write_document
from optsweep.search import run_sweep
from optsweep.testing.trainers import cli_env, write_study

REPO = Path(__file__).resolve().parents[1]
OPTSWEEP = str(Path(sys.executable).parent / "optsweep")
pytestmark = pytest.mark.slow

SCALES = {  # (width, depth, tokens): the brief's shape (N, D), (N, 5D), (~8N, D)
    "n1d1": (32, 1, 16384), "n1d5": (32, 1, 81920), "n8d1": (64, 2, 16384),
}
LAW_SCALES = {"n1d2": (32, 1, 32768), "n3d3": (48, 2, 49152), "n8d4": (64, 2, 65536), "n3d1": (48, 2, 16384)}


def _scale(width: int, depth: int, tokens: int) -> dict:
    return {"width": width, "depth": depth, "heads": 2, "seq_len": 32, "batch_size": 8, "tokens": tokens}


def _notebook(name: str, cwd: Path, page: str | None = None, *parameters: str) -> None:
    done = subprocess.run(
        [OPTSWEEP, "notebook", f"{REPO}/notebooks/{name}.py", "--html", f"reports/{page or name}.html",
         *(arg for parameter in parameters for arg in ("-p", parameter))],
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


def test_report_without_other_optimizers_has_no_comparison(study: Path):
    assert "Other optimizers" not in (study / "reports/index.html").read_text()


# --- another optimizer compared with the tuned AdamW ------------------------------------------------------------

OTHER = "muon"
ADVANTAGE = 0.01  # the fabricated optimizer's loss below AdamW's at every run
TRANSFER_COST = 0.02  # AdamW's optimum carried to it loses this much against its own tuned best


def _shift_losses(node: Any, by: float) -> Any:
    """Every loss in a sweep document moved by `by` (a uniformly better optimizer, same landscape)."""
    if isinstance(node, dict):
        return {k: v + by if k in ("loss", "best_loss") and isinstance(v, float) else _shift_losses(v, by)
                for k, v in node.items()}
    if isinstance(node, list):
        return [_shift_losses(item, by) for item in node]
    return node


def _relabelled_sweep(own: Path, out: Path) -> None:
    sweep = json.loads(own.read_text())
    theirs = _shift_losses(sweep, -ADVANTAGE)
    theirs["optimizer"] = OTHER
    theirs["transfer"] = {"source": "adamw", "carried": sorted(sweep["best"]), "hparams": sweep["best"],
                          "loss": theirs["best_loss"] + TRANSFER_COST, "status": "ok",
                          "tuned_loss": theirs["best_loss"]}
    write_document(out, SweepResult.model_validate(theirs))


def _speedup_table() -> pd.DataFrame:
    """AdamW's loss L(D) = c + 40 D^-0.3 at two model sizes (c = 2, 1.9) and three data scales; the other
    optimizer reaches AdamW's loss at 1.3x its data at the smaller size, and at the larger one a loss below
    AdamW's asymptote (no D_eff)."""
    rows = []
    for n_params, size, floor in ((1e4, "s", 2.0), (1e5, "l", 1.9)):
        for i, tokens in enumerate((1e5, 4e5, 1.6e6)):
            rows.append({"optimizer": "adamw", "scale": f"{size}{i}", "n_params": n_params, "tokens": tokens,
                         "loss": floor + 40 * tokens**-0.3})
        theirs = floor + 40 * (1.3 * 4e5) ** -0.3 if size == "s" else floor - 0.05
        rows.append({"optimizer": OTHER, "scale": f"{size}1", "n_params": n_params, "tokens": 4e5, "loss": theirs})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def compared(study: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("compared") / "study"
    shutil.copytree(study, root)
    params_file = root / "params/study.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["optimizers"] = {OTHER: {"optimizer": OTHER, "baseline": {"lr": 0.02, "momentum": 0.95},
                                    "grid": {"lr": [0.01, 0.02, 0.04]}}}
    params_file.write_text(yaml.safe_dump(params))
    for folder in ("sweeps", "law_sweeps"):
        for own in sorted((root / "results" / folder).glob("*.json")):
            _relabelled_sweep(own, root / "results/optimizers" / OTHER / folder / own.name)
    _notebook("sensitivity", root, f"optimizers/{OTHER}/sensitivity", f"optimizer={OTHER}")
    _notebook("sweep", root, f"optimizers/{OTHER}/sweeps/n1d1", f"optimizer={OTHER}", "scale=n1d1")
    compute_speedup(_speedup_table(), replicates=200).write(root / "results/speedup.json")
    _notebook("report", root, "index")
    return root


def test_sweep_notebook_shows_the_other_optimizers_result(compared: Path):
    theirs = json.loads((compared / f"results/optimizers/{OTHER}/sweeps/n1d1.json").read_text())
    page = (compared / f"reports/optimizers/{OTHER}/sweeps/n1d1.html").read_text()
    assert f"results/optimizers/{OTHER}/sweeps/n1d1.json" in page and f"{theirs['best_loss']:.4f}" in page


def test_sensitivity_notebook_writes_the_other_optimizers_files(study: Path, compared: Path):
    theirs = json.loads((compared / f"results/optimizers/{OTHER}/sensitivity.json").read_text())
    assert theirs["sensitive"] == ["lr"]  # the same landscape, shifted
    assert (compared / "results/sensitivity.json").read_bytes() == (study / "results/sensitivity.json").read_bytes()
    assert (compared / f"reports/optimizers/{OTHER}/sensitivity.html").is_file()


def test_report_compares_the_other_optimizer_with_the_tuned_adamw(compared: Path):
    page = html.unescape((compared / "reports/index.html").read_text())
    speedup = SpeedupResult.read(compared / "results/speedup.json")
    assert "Other optimizers against the tuned AdamW" in page
    for point in speedup.speedups:  # the speedup table, a missing D_eff said as such
        assert (f"{point.speedup:.4g}" if point.speedup else "no D_eff reaches it") in page
    for verdict in speedup.hypotheses:
        assert re.search(re.escape(verdict.hypothesis) + r"</td>\s*<td[^>]*>" + OTHER + r"</td>\s*<td[^>]*>"
                         + verdict.verdict, page), verdict
    for name in ("sweeps", "law_sweeps"):
        for own in (compared / "results" / name).glob("*.json"):
            tuned = json.loads(own.read_text())["best_loss"] - ADVANTAGE
            assert f"{tuned:.4g}" in page  # the tuned-loss table
    assert f"{TRANSFER_COST:.4g}" in page  # the cost of carrying AdamW's optimum
    assert f'href="optimizers/{OTHER}/sensitivity.html"' in page
    assert f'href="optimizers/{OTHER}/sweeps/n1d1.html"' in page
    assert f'href="optimizers/{OTHER}/scaling_law.html"' not in page  # never ran: no link to it
    assert len(re.findall(r"<img[^>]+data:image/png;base64", page)) >= 4  # + the curves and the speedups


def test_results_frames_of_every_optimizer_tell_them_apart(compared: Path):
    paths = project(compared)
    evaluated = results.every_optimizer(results.sweeps, paths)
    own, theirs = results.sweeps(paths), results.sweeps(paths.of_optimizer(OTHER))
    assert len(evaluated) == len(own) + len(theirs) and set(theirs["optimizer"]) == {OTHER}
    by_optimizer = evaluated[evaluated["best"]].groupby(["optimizer", "phase", "scale"])["loss"].first().unstack(0)
    assert (by_optimizer["adamw"] - by_optimizer[OTHER]).round(9).eq(ADVANTAGE).all()


def test_tuned_hyperparameters_side_by_side_leave_a_name_the_optimizer_lacks_empty():
    def sweep(best: dict[str, float]) -> SweepResult:
        return SweepResult.model_construct(phase="phase1", scale={"name": "a"}, best=best)  # what the frame reads

    comparison = Comparison(
        speedup=compute_speedup(_speedup_table(), replicates=20),
        sweeps={"adamw": [sweep({"lr": 1e-3, "beta2": 0.95})], OTHER: [sweep({"lr": 0.02, "momentum": 0.9})]},
        paths={},
    )
    table = tuned_hparams_frame(comparison).set_index("hyperparameter")
    assert table.loc["lr", ["adamw", OTHER]].tolist() == [1e-3, 0.02]
    assert pd.isna(table.loc["beta2", OTHER]) and pd.isna(table.loc["momentum", "adamw"])
