"""Speedup over a tuned AdamW (optsweep.analysis.speedup) on synthetic run tables built from a known L(D)."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from optsweep.analysis import compute_speedup
from optsweep.analysis.speedup import TRANSFER, RelativeNoise, Speedup, SpeedupResult, no_speedup_above
from optsweep.analysis.speedup_sweeps import speedup_from_sweeps
from optsweep.cli import main
from optsweep.params.sections import AnalysisSettings, SpeedupTarget
from optsweep.params.settings import ParamsError
from optsweep.report.comparison import reference_curves_frame, speedup_frame
from optsweep.report.speedup_tables import (
    budgets_frame,
    curve_points_frame,
    predictions_frame,
    unjudged_frame,
    verdicts_frame,
)
from optsweep.results.documents import SweepResult, write_document
from optsweep.results.sweep_documents import SweptRun
from optsweep.testing.trainers import OPTSWEEP, cli_env, write_study

REPO = Path(__file__).resolve().parents[1]

REPLICATES = 200  # enough for the intervals here, fast on a shared 2-core box
MULTIPLES = (1, 2, 4, 8)  # data scales per model size, in units of 20 N (Chinchilla)


def true_loss(tokens: float, n_params: float) -> float:
    """A Chinchilla-like AdamW loss: L(D) = 400 D^-0.3 + c(N), the known curve at each model size."""
    return 400.0 * tokens**-0.3 + 1.5 + 30.0 * n_params**-0.3


def runs_table(
    speedups: dict[str, dict[float, float]], multiples=MULTIPLES, noise: float = 0.0, seed: int = 0
) -> pd.DataFrame:
    """AdamW's runs (its tuned one, a worse config and a diverged one per scale) and, for each other
    optimizer, one run per scale whose loss is AdamW's at `speedup` times the data (per model size), each
    tuned loss plus N(0, noise^2)."""
    rng = np.random.default_rng(seed)
    sizes = sorted({n for by_size in speedups.values() for n in by_size}) or [1e6]
    rows = []
    for n_params in sizes:
        for multiple in multiples:
            tokens, scale = 20 * n_params * multiple, f"n{n_params:g}-x{multiple}"
            at = {"scale": scale, "n_params": n_params, "tokens": tokens, "width": 64}
            best = true_loss(tokens, n_params) + rng.normal(0, noise)
            rows += [
                {"optimizer": "adamw", **at, "lr": 1e-2, "loss": best},
                {"optimizer": "adamw", **at, "lr": 3e-2, "loss": best + 0.08},
                {"optimizer": "adamw", **at, "lr": 1e-1, "loss": 0.1, "status": "diverged"},
                {"optimizer": "adamw", **at, "lr": 3e-1, "loss": math.nan},
            ]
            for optimizer, by_size in speedups.items():
                if n_params in by_size:
                    loss = true_loss(by_size[n_params] * tokens, n_params) + rng.normal(0, noise)
                    rows.append({"optimizer": optimizer, **at, "lr": 3e-3, "loss": loss})
    return pd.DataFrame(rows)


def verdict(result: SpeedupResult, optimizer: str, hypothesis: str) -> str:
    (found,) = [v for v in result.hypotheses if v.optimizer == optimizer and hypothesis in v.hypothesis]
    return found.verdict


def test_recovers_a_known_speedup_and_flags_extrapolation():
    result = compute_speedup(runs_table({"muon": {1e6: 1.3}}), replicates=REPLICATES)
    (curve,) = result.curves
    assert (curve.a, curve.b) == pytest.approx((400.0, 0.3), rel=1e-4)
    assert curve.b_interval[0] < 0.3 < curve.b_interval[1]
    assert curve.losses == pytest.approx([true_loss(20e6 * m, 1e6) for m in MULTIPLES])  # best finite runs only
    assert len(result.speedups) == len(MULTIPLES)
    for speedup, multiple in zip(result.speedups, MULTIPLES):
        assert speedup.speedup == pytest.approx(1.3, rel=1e-4)
        assert speedup.interval[0] < 1.3 < speedup.interval[1]
        assert speedup.effective_tokens == pytest.approx(1.3 * speedup.tokens, rel=1e-4)
        # AdamW ran up to 8x: only the 8x scale needs its curve beyond (1.3 x 8 = 10.4x)
        assert speedup.extrapolated == (multiple == 8)
    assert verdict(result, "muon", "no speedup above 1.4x") == "supported"


def test_a_slower_optimizer_and_one_beyond_adamws_asymptote():
    table = runs_table({"slow": {1e6: 0.8}})
    below = {"optimizer": "magic", "scale": "n1e+06-x1", "n_params": 1e6, "tokens": 20e6, "loss": 1.0}
    result = compute_speedup(pd.concat([table, pd.DataFrame([below])]), replicates=REPLICATES)
    slow = [s for s in result.speedups if s.optimizer == "slow"]
    assert [s.speedup for s in slow] == pytest.approx([0.8] * 4, rel=1e-4)
    assert [s.extrapolated for s in slow] == [True, False, False, False]  # 0.8 x 1x lies below the data
    (magic,) = [s for s in result.speedups if s.optimizer == "magic"]
    assert magic.speedup is None and magic.effective_tokens is None and magic.extrapolated
    assert magic.interval[1] is None
    assert verdict(result, "magic", "no speedup above 1.4x") == "contradicted"


def test_noisy_losses_widen_the_intervals_which_cover_the_truth():
    """Over 8 noisy tables (5 data scales, loss noise 0.01, estimated from the fit's residuals), the 95%
    intervals hold the true 1.3x in most of the 40 (table, scale) cases, and are wider than without noise."""
    multiples = (1, 2, 4, 8, 16)
    quiet = compute_speedup(runs_table({"muon": {1e6: 1.3}}, multiples), replicates=100)
    covered, widths = [], []
    for seed in range(8):
        table = runs_table({"muon": {1e6: 1.3}}, multiples, noise=0.01, seed=seed)
        result = compute_speedup(table, replicates=100, seed=seed)
        (curve,) = result.curves
        assert curve.noise == max(curve.residual_se, result.noise_floor)
        for noisy in result.speedups:
            covered.append(noisy.interval[0] < 1.3 < noisy.interval[1])
            widths.append(noisy.interval[1] - noisy.interval[0])
    assert sum(covered) >= 0.8 * len(covered)
    assert np.mean(widths) > np.mean([s.interval[1] - s.interval[0] for s in quiet.speedups])


def test_claims_judged_with_their_intervals():
    table = runs_table({
        "shrinks": {1e6: 1.3, 8e6: 1.1},
        "steady": {1e6: 1.3, 8e6: 1.3},
        "grows": {1e6: 1.1, 8e6: 1.3},
        "fast": {1e6: 2.0, 8e6: 1.8},
    })
    result = compute_speedup(table, replicates=REPLICATES)
    assert verdict(result, "shrinks", "shrinks with model size") == "supported"
    assert verdict(result, "steady", "shrinks with model size") == "inconclusive"
    assert verdict(result, "grows", "shrinks with model size") == "contradicted"
    assert verdict(result, "fast", "no speedup above 1.4x") == "contradicted"
    assert verdict(result, "steady", "no speedup above 1.4x") == "supported"
    (shrinks,) = [v for v in result.hypotheses if v.optimizer == "shrinks" and "model size" in v.hypothesis]
    # 1.3x -> 1.1x over three doublings of N: a factor (1.1 / 1.3)^(1/3) per doubling
    assert shrinks.estimate == pytest.approx((1.1 / 1.3) ** (1 / 3), rel=1e-3)
    assert shrinks.interval[0] < shrinks.estimate < shrinks.interval[1] < 1 and shrinks.margin > 0


def test_a_claim_straddled_by_its_interval_is_inconclusive():
    result = compute_speedup(runs_table({"muon": {1e6: 1.4}}), replicates=REPLICATES)
    assert verdict(result, "muon", "no speedup above 1.4x") == "inconclusive"


def test_written_and_read_back(tmp_path):
    result = compute_speedup(runs_table({"muon": {1e6: 1.3}, "lion": {1e6: 0.9}}), replicates=REPLICATES)
    path = result.write(tmp_path / "results" / "speedup.json")
    assert SpeedupResult.read(path) == result
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()


def test_model_sizes_without_three_data_scales_are_skipped():
    table = pd.concat([runs_table({"muon": {1e6: 1.3}}), runs_table({"muon": {4e6: 1.3}}, multiples=(1, 2))])
    result = compute_speedup(table, replicates=REPLICATES)
    assert [c.n_params for c in result.curves] == [1e6]
    assert result.skipped == ["n_params 4e+06: adamw has 2 data scales, the fit L(D) = a * D^-b + c needs 3",
                              "size law muon: needs speedups at 2 model sizes and more points than coefficients"]


@pytest.mark.parametrize(("table", "message"), [
    (runs_table({"muon": {1e6: 1.3}}).drop(columns="optimizer"), "runs table: missing column 'optimizer'"),
    (runs_table({"muon": {1e6: 1.3}}).query("optimizer != 'adamw'"),
     "column 'optimizer': no finished run of reference 'adamw'; found muon"),
    (runs_table({"muon": {1e6: 1.3}}, multiples=(1, 2)), "no model size has 3 data scales of adamw"),
    (runs_table({"muon": {1e6: 1.3}}).assign(tokens="many"), "column 'tokens': data row 1 has 'many'"),
])
def test_bad_tables_fail_in_one_line(table, message):
    with pytest.raises(ParamsError) as error:
        compute_speedup(table, replicates=10)
    assert message in str(error.value) and "\n" not in str(error.value)


# --- from sweep results ---------------------------------------------------------------------------------


def sweep_result(
    optimizer: str, n_params: float, multiple: float, best_loss: float | None, phase: str = "phase1",
    transfer: dict | None = None, data_hash: str = "data-1", name: str | None = None,
) -> SweepResult:
    """A sweep result at the scale `name` (default n<N>-x<multiple>) of 20 N x multiple tokens whose best loss
    is `best_loss`."""
    name, tokens = name or f"n{n_params:g}-x{multiple}", 20 * n_params * multiple
    return SweepResult.model_validate({
        "scale": {"name": name, "n_params": n_params, "tokens": tokens, "width": 64, "depth": 2, "steps": 100},
        "optimizer": optimizer, "axes": {"lr": "log"}, "phase": phase, "free": ["lr"], "fixed": {},
        "grid": {"lr": [1e-3, 1e-2]}, "grid_extensions": [], "order": ["lr"], "baseline": {"lr": 1e-3},
        "best": {"lr": 1e-2}, "best_loss": best_loss, "near_best": [], "passes": 1, "converged": True,
        "stop_rule": "pass", "tolerance": 3e-3, "tolerance_kind": "absolute", "trajectory": [], "runs": [],
        "slices": {}, "noise": None, "failed": [],
        "compute": {"runs_planned": 2, "runs_trained": 2, "runs_reused": 0, "tokens": 2 * tokens, "flops": 1.0,
                    "wall_s": 1.0},
        "transfer": transfer,
        "provenance": {"code_version": "test", "params_hash": None, "created": "2026-01-01T00:00:00+00:00",
                       "data_hash": data_hash, "trainer": "default", "trainer_code": "code-1"},
    })


def carried(tuned_loss: float, gap: float | None, status: str = "ok") -> dict:
    """AdamW's optimum carried to the sweep's optimizer, costing `gap` over its tuned loss (None: diverged)."""
    return {"source": "adamw", "carried": ["lr", "warmup"], "hparams": {"lr": 1e-2, "warmup": 10},
            "loss": None if gap is None else tuned_loss + gap, "status": status, "tuned_loss": tuned_loss}


def study_sweeps(speedup: float, gaps: list[float | None] | None = None, **muon: str) -> dict[str, list[SweepResult]]:
    """AdamW's sweeps at four data scales (two phase-1, two law-phase) and Muon's at `speedup`, with
    AdamW's optimum carried to Muon at a cost of `gaps[i]` at scale i."""
    adamw = [sweep_result("adamw", 1e6, m, true_loss(20e6 * m, 1e6), "phase1" if m < 4 else "law")
             for m in MULTIPLES]
    others = []
    for i, m in enumerate(MULTIPLES):
        tuned = true_loss(speedup * 20e6 * m, 1e6)
        transfer = carried(tuned, gaps[i], "diverged" if gaps[i] is None else "ok") if gaps else None
        others.append(sweep_result("muon", 1e6, m, tuned, transfer=transfer, **muon))
    return {"adamw": adamw, "muon": others}


def test_speedup_from_sweeps_of_both_phases_recovers_the_table_result():
    sweeps = study_sweeps(1.3)
    sweeps["muon"].append(sweep_result("muon", 1e6, 16, None))  # no finished run: left out, said so
    result = speedup_from_sweeps(sweeps, replicates=REPLICATES)
    assert [s.speedup for s in result.speedups] == pytest.approx([1.3] * 4, rel=1e-4)
    assert [s.extrapolated for s in result.speedups] == [False, False, False, True]
    (curve,) = result.curves
    assert curve.tokens == [20e6 * m for m in MULTIPLES]  # AdamW's law-phase scales count too
    assert result.skipped == [
        "optimizer muon scale n1e+06-x16 (phase1): no finished run",
        "size law muon: needs speedups at 2 model sizes and more points than coefficients",
        "shared law: needs 2 model sizes, 2 data scales and more than 7 tuned losses",
    ]
    assert verdict(result, "muon", "no speedup above 1.4x") == "supported"
    assert result.transfers == [] and not [v for v in result.hypotheses if "transfer" in v.hypothesis]


def test_sweeps_trained_on_other_data_are_refused_in_one_line():
    sweeps = study_sweeps(1.3, data_hash="data-2")
    with pytest.raises(ParamsError) as error:
        speedup_from_sweeps(sweeps, replicates=10)
    message = str(error.value)
    assert "disagree on data_hash" in message and "muon n1e+06-x1" in message and "adamw n1e+06-x1" in message
    assert "\n" not in message


@pytest.mark.parametrize(("gaps", "expected"), [
    ([0.0, 0.001, -0.002, 0.0005], "contradicted"),  # within one run's noise (the floor, 3e-3) everywhere
    ([0.0, 0.001, 0.05, 0.0], "supported"),  # far above z x sqrt(2) x noise at one scale
    ([0.0, None, 0.0, 0.0], "supported"),  # the carried optimum diverged
    ([0.0, 0.005, 0.0, 0.0], "inconclusive"),  # above the noise, within z x sqrt(2) x noise
    ([0.0, -0.02, 0.0, 0.0], "inconclusive"),  # beat the tuned loss: Muon's search missed a better config
])
def test_optimal_hyperparameters_transfer_or_not(gaps, expected):
    result = speedup_from_sweeps(study_sweeps(1.3, gaps), replicates=REPLICATES)
    (judged,) = [v for v in result.hypotheses if "do not transfer" in v.hypothesis]
    assert (judged.optimizer, judged.verdict) == ("muon", expected)
    (curve,) = result.curves
    assert curve.noise == result.noise_floor and judged.noise == curve.noise  # exact curve: the floor
    assert "carried: lr, warmup" in judged.why
    assert [gap.gap for gap in result.transfers] == pytest.approx(gaps)
    z_spread = norm.ppf(0.975) * math.sqrt(2) * curve.noise  # the two-sided z of the 95% level
    if expected == "supported" and None not in gaps:
        assert judged.estimate == pytest.approx(0.05) and judged.margin == pytest.approx(0.05 - z_spread, rel=1e-5)
        assert judged.interval == pytest.approx((0.05 - z_spread, 0.05 + z_spread), rel=1e-5)
    if expected == "contradicted":
        assert judged.estimate == pytest.approx(-0.002) and judged.margin == pytest.approx(curve.noise - 0.002)
    if expected == "inconclusive":
        assert judged.margin is None


def test_without_other_optimizers_the_result_is_empty_and_says_so(tmp_path):
    result = speedup_from_sweeps({"adamw": study_sweeps(1.3)["adamw"]}, replicates=REPLICATES)
    assert (result.curves, result.speedups, result.hypotheses) == ([], [], [])
    assert result.skipped == ["no other optimizer than adamw has a finished sweep: nothing to compare"]
    stamped = result.stamped("hash-1", sweeps=["n1e+06-x1"])
    assert SpeedupResult.read(stamped.write(tmp_path / "speedup.json")) == stamped
    assert stamped.provenance.params_hash == "hash-1"


# --- the speedup notebook, as the pipeline runs it ------------------------------------------------------

STUDY_SCALES = {"phase1": ["a", "b"], "law": ["c", "d"]}  # one model size, 1x 2x 4x 8x its data


def notebook_study(root: Path, optimizers: dict, **sections: dict) -> Path:
    """A project whose params name `optimizers` (and hold `sections`), with AdamW's sweep results and Muon's at
    1.3x (AdamW's optimum carried over to Muon costs nothing at every scale)."""
    scale = {"width": 32, "depth": 1, "heads": 2, "seq_len": 32, "batch_size": 8, "tokens": 8192}
    write_study(root / "params", "bowl", scales={n: scale for n in STUDY_SCALES["phase1"]},
                law_scales={n: scale for n in STUDY_SCALES["law"]}, optimizers=optimizers, **sections)
    (root / "params/params.yaml").rename(root / "params/study.yaml")
    names = [(phase, name) for phase, names in STUDY_SCALES.items() for name in names]
    for (phase, name), multiple in zip(names, MULTIPLES):
        adamw_loss, muon_loss = true_loss(20e6 * multiple, 1e6), true_loss(1.3 * 20e6 * multiple, 1e6)
        results = {"results/sweeps" if phase == "phase1" else "results/law_sweeps":
                   sweep_result("adamw", 1e6, multiple, adamw_loss, phase, name=name),
                   f"results/optimizers/muon/{'sweeps' if phase == 'phase1' else 'law_sweeps'}":
                   sweep_result("muon", 1e6, multiple, muon_loss, phase, carried(muon_loss, 0.0), name=name)}
        for folder, result in results.items():
            write_document(root / folder / f"{name}.json", result)
    return root


def run_speedup_notebook(root: Path) -> SpeedupResult:
    done = subprocess.run(
        [OPTSWEEP, "notebook", f"{REPO}/notebooks/speedup.py", "--html", "reports/speedup.html",
         "-p", f"replicates={REPLICATES}"],
        cwd=root, env=cli_env(), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "speedup" in (root / "reports/speedup.html").read_text()
    return SpeedupResult.read(root / "results/speedup.json")


@pytest.mark.slow
def test_speedup_notebook_compares_the_optimizers_in_params(tmp_path):
    muon = {"baseline": {"lr": 0.02}, "grid": {"lr": [0.01, 0.02, 0.04]}}
    result = run_speedup_notebook(notebook_study(tmp_path, {"muon": muon}))
    assert [s.scale for s in result.speedups] == ["a", "b", "c", "d"]
    assert [s.speedup for s in result.speedups] == pytest.approx([1.3] * 4, rel=1e-4)
    assert {(v.optimizer, v.verdict) for v in result.hypotheses if "transfer" in v.hypothesis} == {
        ("muon", "contradicted")}
    assert result.provenance.sweeps == {"adamw": ["a", "b", "c", "d"], "muon": ["a", "b", "c", "d"]}
    assert result.provenance.data_hash == "data-1"
    assert [(b.optimizer, b.scale, b.runs) for b in result.budgets] == [
        (optimizer, scale, 2) for optimizer in ("adamw", "muon") for scale in "abcd"]
    assert {s.noise_source for s in result.speedups} == {"floor (no noise measured for muon)"}
    page = (tmp_path / "reports/speedup.html").read_text()
    assert "What tuning cost" in page and "noise source" in page and "No size law" in page


@pytest.mark.slow
def test_speedup_notebook_uses_the_analysis_settings_speedup_noise(tmp_path):
    muon = {"baseline": {"lr": 0.02}, "grid": {"lr": [0.01, 0.02, 0.04]}}
    result = run_speedup_notebook(notebook_study(tmp_path, {"muon": muon}, analysis={"speedup_noise": 0.02}))
    assert result.stated_noise == 0.02 and result.curves[0].noise_source == "stated (analysis.speedup_noise)"
    assert {(s.noise, s.noise_source) for s in result.speedups} == {(0.02, "stated (analysis.speedup_noise)")}


@pytest.mark.slow
def test_speedup_notebook_without_other_optimizers_writes_an_empty_result(tmp_path):
    result = run_speedup_notebook(notebook_study(tmp_path, {}))
    assert (result.curves, result.speedups, result.hypotheses) == ([], [], [])
    assert result.skipped == ["no other optimizer than adamw has a finished sweep: nothing to compare"]


def test_the_noise_each_optimizers_analysis_measured_widens_its_intervals():
    table = runs_table({"muon": {1e6: 1.3}})
    floor_only = compute_speedup(table, replicates=REPLICATES)
    measured = compute_speedup(table, replicates=REPLICATES, relative_noise={"adamw": 0.004, "muon": 0.01})
    for narrow, wide in zip(floor_only.speedups, measured.speedups):
        assert narrow.noise == pytest.approx(3e-3) and wide.noise == pytest.approx(0.01 * wide.loss)
        assert wide.interval[1] - wide.interval[0] > 2 * (narrow.interval[1] - narrow.interval[0])
        assert wide.interval[0] < 1.3 < wide.interval[1]
    assert measured.curves[0].noise == pytest.approx(0.004 * np.mean(measured.curves[0].losses))


def test_a_contradicted_claim_rests_on_adamws_measured_data_where_it_can():
    def at(scale: str, low: float, extrapolated: bool) -> Speedup:
        return Speedup(optimizer="muon", scale=scale, n_params=1e6, tokens=1e7, loss=3.0, reference_loss=3.1,
                       effective_tokens=2e7, speedup=low + 0.2, interval=(low, low + 0.4), extrapolated=extrapolated)

    claim = no_speedup_above("muon", [at("x1", 1.6, False), at("x8", 3.0, True)])
    deciding, quoted = claim.why.split("; ")
    assert claim.verdict == "contradicted" and "x1" in deciding and "extrapolated" not in deciding
    assert claim.margin == pytest.approx(0.2)
    # the estimate quoted is the largest speedup (x8's), not the deciding scale's, and says it is extrapolated
    assert (claim.estimate, claim.interval, claim.scale) == (pytest.approx(3.2), (3.0, 3.4), "x8")
    assert quoted == "largest speedup 3.2x (D_eff extrapolated) at scale x8"
    claim = no_speedup_above("muon", [at("x1", 1.0, False), at("x8", 3.0, True)])
    assert claim.verdict == "contradicted" and "x8" in claim.why and "extrapolated" in claim.why


def test_a_supported_or_inconclusive_claim_quotes_the_largest_speedup_not_the_widest_interval():
    def at(scale: str, speedup: float | None, interval: tuple) -> Speedup:
        return Speedup(optimizer="muon", scale=scale, n_params=1e6, tokens=1e7, loss=3.0, reference_loss=3.1,
                       effective_tokens=None if speedup is None else speedup * 1e7, speedup=speedup,
                       interval=interval, extrapolated=False)

    # x2 has the highest upper bound (it decides), x1 the largest point speedup (it is quoted)
    claim = no_speedup_above("muon", [at("x1", 1.25, (1.2, 1.3)), at("x2", 1.1, (0.9, 1.35))])
    assert claim.verdict == "supported" and "highest upper bound: scale x2" in claim.why
    assert (claim.estimate, claim.scale, claim.interval) == (1.25, "x1", (1.2, 1.3))
    assert claim.margin == pytest.approx(1.4 - 1.35)
    claim = no_speedup_above("muon", [at("x1", 1.3, (1.2, 1.5)), at("x2", None, (1.0, None))])
    assert claim.verdict == "inconclusive" and (claim.estimate, claim.scale) == (None, "x2")  # unbounded: largest
    assert claim.why.endswith("largest speedup unbounded at scale x2")


def test_a_study_without_three_data_scales_says_so_and_still_judges_the_transfer():
    sweeps = study_sweeps(1.3, gaps=[0.2, 0.2, 0.2, 0.2])
    sweeps = {name: results[:2] for name, results in sweeps.items()}  # two data scales: no L(D) to fit
    with pytest.raises(ParamsError, match="no model size has 3 data scales"):
        compute_speedup(runs_table({"muon": {1e6: 1.3}}, multiples=(1, 2)))  # a runs table: an error
    result = speedup_from_sweeps(sweeps, replicates=REPLICATES)
    assert result.curves == [] and result.speedups == []
    assert any("the fit L(D) = a * D^-b + c needs 3" in line for line in result.skipped)
    assert [v.hypothesis for v in result.hypotheses] == ["optimal hyperparameters do not transfer between optimizers"]


SIZES = (1e6, 4e6, 1.6e7)


def test_size_law_recovers_a_shrinking_speedup_and_predicts_beyond_with_a_flag():
    def speedup(n: float) -> float:
        return 1.6 * (n / 1e6) ** -0.1  # x 2^-0.1 per doubling of N

    table = runs_table({"muon": {n: speedup(n) for n in SIZES}}, noise=1e-3, seed=3)
    targets = [SpeedupTarget(n_params=1e8, chinchilla=2), SpeedupTarget(n_params=4e6, chinchilla=2)]
    result = compute_speedup(table, replicates=REPLICATES, targets=targets)
    (law,) = result.size_laws
    assert law.optimizer == "muon" and "ratio_slope" in law.coefficients
    low, high = law.per_doubling.interval
    assert low < 2**-0.1 < high and high < 1  # shrinking, and the interval says so
    far, inside = law.predictions
    assert far.extrapolated and not inside.extrapolated
    assert far.interval[0] < speedup(1e8) < far.interval[1]
    assert inside.interval[0] < speedup(4e6) < inside.interval[1]
    assert far.interval[1] - far.interval[0] > inside.interval[1] - inside.interval[0]


def test_shared_law_recovers_the_exponents_and_each_optimizers_data_efficiency():
    table = runs_table({"muon": {n: 1.5 for n in SIZES}, "lion": {n: 0.8 for n in SIZES}}, noise=1e-3, seed=4)
    law = compute_speedup(table, replicates=REPLICATES).shared_law
    assert law.points == 3 * len(SIZES) * len(MULTIPLES)
    for estimate, truth in ((law.alpha, 0.3), (law.beta, 0.3), (law.E, 1.5), (law.rho_D["muon"], 1.5),
                            (law.rho_D["lion"], 0.8), (law.rho_N["muon"], 1.0)):
        assert estimate.interval[0] < truth < estimate.interval[1], (estimate, truth)
    assert law.rho_D["adamw"].estimate == 1.0


# --- what the document records: the noise and its source, the points, the unjudged claims, the costs ------


def test_the_noise_behind_each_curve_and_speedup_names_its_source():
    table = runs_table({"muon": {1e6: 1.3}})
    floor = compute_speedup(table, replicates=REPLICATES)
    assert floor.curves[0].noise_source == "floor (no noise measured for adamw)"
    assert {s.noise_source for s in floor.speedups} == {"floor (no noise measured for muon)"}
    relative = {"adamw": RelativeNoise(0.004, "seeds"), "muon": RelativeNoise(1e-5, "seeds")}
    measured = compute_speedup(table, replicates=REPLICATES, relative_noise=relative)
    assert measured.curves[0].noise_source == "measured from seeds (relative std 0.004 x loss)"
    assert all(s.noise == 3e-3 and s.noise_source.startswith("floor (above the measured") for s in measured.speedups)
    stated = compute_speedup(table, replicates=REPLICATES, stated_noise=0.02)
    assert stated.stated_noise == 0.02 and stated.curves[0].noise == 0.02
    assert {(s.noise, s.noise_source) for s in stated.speedups} == {(0.02, "stated (analysis.speedup_noise)")}
    for narrow, wide in zip(floor.speedups, stated.speedups):
        assert wide.interval[1] - wide.interval[0] > 3 * (narrow.interval[1] - narrow.interval[0])
    noisy = compute_speedup(runs_table({"muon": {1e6: 1.3}}, (1, 2, 4, 8, 16), noise=0.01, seed=1), replicates=50)
    assert noisy.curves[0].noise == noisy.curves[0].residual_se > 3e-3
    assert noisy.curves[0].noise_source.startswith("residual SE of the fit (2 dof; above the floor")


def test_the_analysis_settings_set_the_speedup_noise_and_its_floor():
    settings = AnalysisSettings(speedup_noise_floor=0.01, speedup_targets=[{"n_params": 1e8, "chinchilla": 1}])
    result = compute_speedup(runs_table({"muon": {1e6: 1.3}}), replicates=REPLICATES, **settings.speedup_options())
    assert result.noise_floor == 0.01 and {s.noise for s in result.speedups} == {0.01}
    stated = AnalysisSettings(speedup_noise=0.005).speedup_options({"muon": 0.5})
    result = compute_speedup(runs_table({"muon": {1e6: 1.3}}), replicates=REPLICATES, **stated)
    assert {s.noise for s in result.speedups} == {0.005}  # stated: the measured 0.5 x loss is not used
    with pytest.raises(ValueError):
        AnalysisSettings(speedup_noise=-1.0)


def test_each_curve_lists_the_points_it_fitted_left_out_and_beyond_the_others():
    table = runs_table({"muon": {1e6: 1.3}}, (1, 2, 4, 8, 16))
    table = table[~((table["optimizer"] == "muon") & (table["scale"] == "n1e+06-x16"))]  # muon: up to 8x
    never = {"optimizer": "adamw", "scale": "n1e+06-x32", "n_params": 1e6, "tokens": 640e6, "loss": 9.0,
             "status": "diverged"}
    result = compute_speedup(pd.concat([table, pd.DataFrame([never])]), replicates=REPLICATES)
    (curve,) = result.curves
    assert curve.scales == [f"n1e+06-x{m}" for m in (1, 2, 4, 8, 16)]
    assert curve.left_out == ["n1e+06-x32: no finished run"] and curve.beyond_others == ["n1e+06-x16"]
    assert not any(s.extrapolated for s in result.speedups) and {s.extrapolation for s in result.speedups} == {None}
    (eight,) = [s for s in compute_speedup(runs_table({"muon": {1e6: 1.3}}), replicates=REPLICATES).speedups
                if s.scale == "n1e+06-x8"]
    assert eight.extrapolation == f"D_eff {eight.effective_tokens:.3g} is 1.3x the largest data fitted (1.6e+08)"


def test_claims_that_could_not_be_judged_are_listed_with_the_reason():
    table = pd.concat([runs_table({"muon": {1e6: 1.3}}), runs_table({"lion": {4e6: 1.1}}, multiples=(1, 2))])
    result = compute_speedup(table, replicates=REPLICATES)
    unjudged = {(u.optimizer, u.hypothesis): u.why for u in result.unjudged}
    why = "no finished run at a model size where adamw's curve was fitted"
    assert unjudged[("lion", "no speedup above 1.4x over a tuned AdamW")] == why
    assert unjudged[("lion", "the speedup shrinks with model size")] == why
    assert unjudged[("muon", TRANSFER)].startswith("a runs table records no carried optimum")
    assert ("muon", "the speedup shrinks with model size") not in unjudged
    sweeps = study_sweeps(1.3)
    (claim,) = speedup_from_sweeps(sweeps, replicates=REPLICATES).unjudged
    assert (claim.optimizer, claim.hypothesis) == ("muon", TRANSFER)
    assert claim.why == "no sweep recorded a carried optimum (`transfer`)"
    sweeps = study_sweeps(1.3, gaps=[0.0] * 4)
    sweeps["muon"] = [s.model_copy(update={"transfer": s.transfer.model_copy(update={"status": "failed"})})
                      for s in sweeps["muon"]]
    (claim,) = speedup_from_sweeps(sweeps, replicates=REPLICATES).unjudged
    assert claim.why.startswith("optimizer muon scale n1e+06-x1: adamw's optimum not judged (its run is failed)")


def with_runs(sweep: SweepResult, flops_per_token: float, tokens_per_s: list[float], flops: float) -> SweepResult:
    """The sweep with finished runs whose results record `tokens_per_s` (one run each) and `flops_per_token`,
    and a `compute` of `flops`."""
    tokens = sweep.scale["tokens"]
    runs = [SweptRun(key=f"k{i}", hparams={"lr": 1e-2}, seed=0, loss=sweep.best_loss, status="ok",
                     result={"tokens": tokens, "flops": flops_per_token * tokens, "tokens_per_s": speed})
            for i, speed in enumerate(tokens_per_s)]
    runs.append(SweptRun(key="d", hparams={"lr": 1.0}, seed=0, loss=None, status="diverged",
                         result={"tokens": tokens, "flops": 1.0, "tokens_per_s": 1.0}))  # not a finished run
    return sweep.model_copy(update={"runs": runs, "compute": sweep.compute.model_copy(update={"flops": flops})})


def test_compute_and_wall_clock_speedups_from_the_runs_measured_throughput():
    sweeps = study_sweeps(1.3)
    sweeps["adamw"] = [with_runs(s, 100.0, [900.0, 1000.0, 1100.0], 5e9 * i) for i, s in enumerate(sweeps["adamw"])]
    sweeps["muon"] = [with_runs(s, 125.0, [400.0, 500.0], 7e9) for s in sweeps["muon"]]
    result = speedup_from_sweeps(sweeps, replicates=REPLICATES)
    for s in result.speedups:
        assert (s.flops_per_token, s.reference_flops_per_token) == (125.0, 100.0)
        assert (s.tokens_per_s, s.reference_tokens_per_s) == (450.0, 1000.0)  # medians over finished runs
        assert s.compute_speedup == pytest.approx(s.speedup * 100 / 125)
        assert s.wall_clock_speedup == pytest.approx(s.speedup * 450 / 1000)
        assert s.compute_interval == pytest.approx(tuple(b * 0.8 for b in s.interval))
        assert s.wall_clock_interval == pytest.approx(tuple(b * 0.45 for b in s.interval))
    budgets = {(b.optimizer, b.scale): b for b in result.budgets}
    assert len(budgets) == 8 and budgets[("adamw", "n1e+06-x4")].flops == 1e10
    assert budgets[("muon", "n1e+06-x2")].runs == 2 and budgets[("muon", "n1e+06-x2")].phase == "phase1"
    assert budgets[("muon", "n1e+06-x2")].best_loss == sweeps["muon"][1].best_loss


def test_a_runs_table_gives_costs_and_budgets_from_its_columns():
    table = runs_table({"muon": {1e6: 1.3}})
    plain = compute_speedup(table, replicates=REPLICATES)
    assert {(s.compute_speedup, s.wall_clock_speedup) for s in plain.speedups} == {(None, None)}
    budget = {(b.optimizer, b.scale): b for b in plain.budgets}
    assert (budget[("adamw", "n1e+06-x1")].runs, budget[("adamw", "n1e+06-x1")].flops) == (4, None)
    costs = table.assign(flops=table["tokens"] * np.where(table["optimizer"] == "muon", 130.0, 100.0),
                         tokens_per_s=np.where(table["optimizer"] == "muon", 800.0, 1000.0))
    result = compute_speedup(costs, replicates=REPLICATES)
    for s in result.speedups:
        assert s.compute_speedup == pytest.approx(s.speedup / 1.3)
        assert s.wall_clock_speedup == pytest.approx(s.speedup * 0.8)
    budget = {(b.optimizer, b.scale): b for b in result.budgets}
    first = costs[(costs["optimizer"] == "adamw") & (costs["scale"] == "n1e+06-x1")]
    assert budget[("adamw", "n1e+06-x1")].flops == pytest.approx(first["flops"].sum())
    assert budget[("muon", "n1e+06-x1")].best_loss == pytest.approx(true_loss(1.3 * 20e6, 1e6))


def test_optsweep_analyze_speedup_noise_sets_the_noise_behind_the_speedups(tmp_path):
    table = runs_table({"muon": {1e6: 1.3}})
    table = table[table["loss"].notna()]  # the analyze command wants a status for these
    worse = table[table["optimizer"] == "muon"].assign(lr=1e-2, loss=lambda t: t["loss"] + 0.05)  # lr swept
    pd.concat([table, worse]).to_csv(tmp_path / "runs.csv", index=False)
    out = tmp_path / "out"
    assert main(["analyze", str(tmp_path / "runs.csv"), "--out", str(out), "--speedup-noise", "0.02"]) == 0
    result = SpeedupResult.read(out / "speedup.json")
    assert result.stated_noise == 0.02
    assert {(s.noise, s.noise_source) for s in result.speedups} == {(0.02, "stated (analysis.speedup_noise)")}


def test_the_report_tables_show_costs_points_budgets_unjudged_claims_and_predictions():
    table = runs_table({"muon": {n: 1.6 * (n / 1e6) ** -0.1 for n in SIZES}}, noise=1e-3, seed=3)
    speed = np.where(table["optimizer"] == "muon", 50.0, 100.0)
    table = table.assign(flops=table["tokens"] * 100.0, tokens_per_s=speed)
    result = compute_speedup(table, replicates=REPLICATES, targets=[SpeedupTarget(n_params=1e8, chinchilla=2)])
    speedups = speedup_frame(result)
    assert speedups["wall-clock speedup"].to_numpy() == pytest.approx(speedups["speedup"].to_numpy() / 2)
    assert speedups["compute speedup"].to_numpy() == pytest.approx(speedups["speedup"].to_numpy())
    assert set(speedups["noise source"]) == {"floor (no noise measured for muon)"}
    points = curve_points_frame(result)
    assert list(points["fitted"]) == [", ".join(c.scales) for c in result.curves] and len(points) == len(SIZES)
    assert list(reference_curves_frame(result)["noise source"]) == [c.noise_source for c in result.curves]
    budgets = budgets_frame(result)
    assert len(budgets) == 2 * len(SIZES) * len(MULTIPLES) and budgets["FLOPs"].notna().all()
    assert list(unjudged_frame(result)["hypothesis"]) == [TRANSFER]
    (prediction,) = predictions_frame(result).itertuples()
    assert prediction.optimizer == "muon" and prediction.speedup == result.size_laws[0].predictions[0].speedup
    quoted = [v for v in result.hypotheses if v.scale]  # the 1.4x claim's largest speedup
    assert list(verdicts_frame(result).dropna(subset="at scale")["at scale"]) == [v.scale for v in quoted]
    assert quoted and all(v.estimate == max(s.speedup for s in result.speedups if s.optimizer == v.optimizer)
                          for v in quoted)
