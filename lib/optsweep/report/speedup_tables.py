"""A speedup result (results/speedup.json) as tables for the notebooks: speedups (in tokens, compute and
wall-clock time), AdamW's curves and the points each fitted, the tuned points, the verdicts and the claims not
judged, the transfer gaps, the tuning budgets and the size laws' predictions."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..results.speedup_documents import SpeedupResult


def speedups_frame(result: SpeedupResult) -> pd.DataFrame:
    """One row per (optimizer, scale): tuned losses, D_eff and the speedup with its interval and flag, the
    compute and wall-clock speedups, and the noise behind the interval with its source."""
    low, high = f"{result.level:.0%} low", f"{result.level:.0%} high"
    return pd.DataFrame(
        [{"optimizer": s.optimizer, "scale": s.scale, "N": s.n_params, "D": s.tokens, "tuned loss": s.loss,
          f"{result.reference} loss": s.reference_loss, "D_eff": s.effective_tokens, "speedup": s.speedup,
          low: s.interval[0], high: s.interval[1], "compute speedup": s.compute_speedup,
          "wall-clock speedup": s.wall_clock_speedup, "extrapolated": s.extrapolation or "", "noise": s.noise,
          "noise source": s.noise_source} for s in result.speedups],
        columns=["optimizer", "scale", "N", "D", "tuned loss", f"{result.reference} loss", "D_eff", "speedup",
                 low, high, "compute speedup", "wall-clock speedup", "extrapolated", "noise", "noise source"],
    )


def curve_points_frame(result: SpeedupResult) -> pd.DataFrame:
    """Per model size: the reference's scales its curve fitted, those beyond every other optimizer's data
    there, those left out and why, and the noise its bootstrap used with the source."""
    return pd.DataFrame(
        [{"N": c.n_params, "fitted": ", ".join(c.scales), "beyond the others' data": ", ".join(c.beyond_others),
          "left out": "; ".join(c.left_out), "noise": c.noise, "noise source": c.noise_source} for c in result.curves],
        columns=["N", "fitted", "beyond the others' data", "left out", "noise", "noise source"],
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
          "low": v.interval[0], "high": v.interval[1], "at scale": v.scale, "margin": v.margin, "noise": v.noise,
          "why": v.why}
         for v in result.hypotheses],
        columns=["optimizer", "hypothesis", "verdict", "estimate", "low", "high", "at scale", "margin", "noise",
                 "why"],
    )


def unjudged_frame(result: SpeedupResult) -> pd.DataFrame:
    """The claims not judged for an optimizer, and why."""
    return pd.DataFrame([{"optimizer": u.optimizer, "hypothesis": u.hypothesis, "why": u.why} for u in result.unjudged],
                        columns=["optimizer", "hypothesis", "why"])


def budgets_frame(result: SpeedupResult) -> pd.DataFrame:
    """What tuning each optimizer at each scale cost (runs, FLOPs) beside the best loss it found."""
    return pd.DataFrame(
        [{"optimizer": b.optimizer, "scale": b.scale, "phase": b.phase, "runs": b.runs, "FLOPs": b.flops,
          "best loss": b.best_loss} for b in result.budgets],
        columns=["optimizer", "scale", "phase", "runs", "FLOPs", "best loss"],
    ).astype({"FLOPs": float, "best loss": float})


def predictions_frame(result: SpeedupResult) -> pd.DataFrame:
    """Each size law's predicted speedup at the targets (analysis.speedup_targets), with its interval."""
    return pd.DataFrame(
        [{"optimizer": law.optimizer, "N": p.n_params, "x Chinchilla": p.chinchilla, "D": p.tokens,
          "speedup": p.speedup, "low": p.interval[0], "high": p.interval[1], "extrapolated": p.extrapolated,
          "per doubling of N": law.per_doubling.estimate} for law in result.size_laws for p in law.predictions],
        columns=["optimizer", "N", "x Chinchilla", "D", "speedup", "low", "high", "extrapolated", "per doubling of N"],
    )


def transfers_frame(result: SpeedupResult) -> pd.DataFrame:
    """The reference's optimum carried to each optimizer, per scale: its loss against the tuned loss."""
    return pd.DataFrame(
        [{"optimizer": g.optimizer, "scale": g.scale, "phase": g.phase, "carried": ", ".join(g.carried),
          "status": g.status, "carried loss": g.loss, "tuned loss": g.tuned_loss, "gap": g.gap, "noise": g.noise}
         for g in result.transfers],
        columns=["optimizer", "scale", "phase", "carried", "status", "carried loss", "tuned loss", "gap", "noise"],
    )
