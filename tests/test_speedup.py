"""Speedup over a tuned AdamW (optsweep.analysis.speedup) on synthetic run tables built from a known L(D)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from optsweep.analysis import compute_speedup
from optsweep.analysis.speedup import SpeedupResult
from optsweep.config import ParamsError

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
    assert result.skipped == ["n_params 4e+06: adamw has 2 data scales, the fit L(D) = a * D^-b + c needs 3"]


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
