"""A speedup result (results/speedup.json) as tables for the notebooks: speedups, AdamW's curves, the tuned
points, the verdicts and the transfer gaps."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..results.speedup_documents import SpeedupResult


def speedups_frame(result: SpeedupResult) -> pd.DataFrame:
    """One row per (optimizer, scale): tuned losses, D_eff and the speedup with its interval and flag."""
    low, high = f"{result.level:.0%} low", f"{result.level:.0%} high"
    return pd.DataFrame(
        [{"optimizer": s.optimizer, "scale": s.scale, "N": s.n_params, "D": s.tokens, "tuned loss": s.loss,
          f"{result.reference} loss": s.reference_loss, "D_eff": s.effective_tokens, "speedup": s.speedup,
          low: s.interval[0], high: s.interval[1], "extrapolated": s.extrapolated} for s in result.speedups],
        columns=["optimizer", "scale", "N", "D", "tuned loss", f"{result.reference} loss", "D_eff", "speedup",
                 low, high, "extrapolated"],
    )


def curves_frame(result: SpeedupResult, samples: int = 60) -> pd.DataFrame:
    """The reference's fitted L(D) per model size along D, over its data and every optimizer's D and D_eff."""
    rows = []
    for curve in result.curves:
        here = [s for s in result.speedups if s.n_params == curve.n_params]
        reached = [t for s in here for t in (s.tokens, s.effective_tokens) if t is not None]
        low, high = min([*curve.tokens, *reached]) / 1.2, max([*curve.tokens, *reached]) * 1.2
        for tokens in np.geomspace(low, high, samples):
            rows.append({"N": curve.n_params, "D": tokens, "loss": curve.a * tokens**-curve.b + curve.c})
    return pd.DataFrame(rows, columns=["N", "D", "loss"])


def tuned_points_frame(result: SpeedupResult) -> pd.DataFrame:
    """Every optimizer's tuned loss at its D, per model size with a fitted curve (the reference's too)."""
    rows = [{"optimizer": result.reference, "N": c.n_params, "D": t, "loss": loss}
            for c in result.curves for t, loss in zip(c.tokens, c.losses)]
    rows += [{"optimizer": s.optimizer, "N": s.n_params, "D": s.tokens, "loss": s.loss} for s in result.speedups]
    return pd.DataFrame(rows, columns=["optimizer", "N", "D", "loss"])


def verdicts_frame(result: SpeedupResult) -> pd.DataFrame:
    """The talk's claims per optimizer: verdict, estimate with its interval, margin, noise and why."""
    return pd.DataFrame(
        [{"optimizer": v.optimizer, "hypothesis": v.hypothesis, "verdict": v.verdict, "estimate": v.estimate,
          "low": v.interval[0], "high": v.interval[1], "margin": v.margin, "noise": v.noise, "why": v.why}
         for v in result.hypotheses],
        columns=["optimizer", "hypothesis", "verdict", "estimate", "low", "high", "margin", "noise", "why"],
    )


def transfers_frame(result: SpeedupResult) -> pd.DataFrame:
    """The reference's optimum carried to each optimizer, per scale: its loss against the tuned loss."""
    return pd.DataFrame(
        [{"optimizer": g.optimizer, "scale": g.scale, "phase": g.phase, "carried": ", ".join(g.carried),
          "status": g.status, "carried loss": g.loss, "tuned loss": g.tuned_loss, "gap": g.gap, "noise": g.noise}
         for g in result.transfers],
        columns=["optimizer", "scale", "phase", "carried", "status", "carried loss", "tuned loss", "gap", "noise"],
    )
