"""Other optimizers against the tuned AdamW (params `optimizers`, results/speedup.json): tuned losses and
hyperparameters, speedups, reference curves, transfers, and the per-optimizer pages."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..params.paths import SWEEP_FOLDERS, ProjectPaths
from ..params.settings import StudyParams
from ..results.documents import SweepResult
from ..results.speedup_documents import Interval, SpeedupResult
from .study import study_sweeps


@dataclass(frozen=True)
class Comparison:
    """The other optimizers' studies next to the reference's (the tuned AdamW) and their speedups over it."""

    speedup: SpeedupResult
    sweeps: dict[str, list[SweepResult]]  # optimizer -> its sweeps of both phases; the reference first
    paths: dict[str, ProjectPaths]  # optimizer -> where its results and reports live

    @property
    def others(self) -> list[str]:
        return [name for name in self.sweeps if name != self.speedup.reference]

    def every_sweep(self) -> list[SweepResult]:
        return [sweep for sweeps in self.sweeps.values() for sweep in sweeps]


def load_comparison(paths: ProjectPaths, params: StudyParams, own_sweeps: list[SweepResult]) -> Comparison | None:
    """The comparison when the params name other optimizers and results/speedup.json exists, else None."""
    if not params.optimizers or not paths.speedup.is_file():
        return None
    speedup = SpeedupResult.read(paths.speedup)
    theirs = {name: paths.of_optimizer(name) for name in params.optimizers}
    return Comparison(
        speedup=speedup,
        sweeps={speedup.reference: own_sweeps, **{name: study_sweeps(p, params) for name, p in theirs.items()}},
        paths={speedup.reference: paths, **theirs},
    )


SCALE_ROW = ("phase", "scale", "N (non-emb.)", "D (tokens)")


def _scale_row(sweep: SweepResult) -> dict[str, Any]:
    scale = sweep.scale
    return {"phase": sweep.phase, "scale": scale["name"], "N (non-emb.)": scale["n_params"],
            "D (tokens)": scale["tokens"]}


def tuned_loss_frame(comparison: Comparison) -> pd.DataFrame:
    """One row per scale, one column per optimizer: its tuned (best) held-out loss there ("-": not swept, or
    every run diverged)."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for optimizer, sweeps in comparison.sweeps.items():
        for sweep in sweeps:
            rows.setdefault((sweep.phase, str(sweep.scale["name"])), _scale_row(sweep))[optimizer] = sweep.best_loss
    frame = pd.DataFrame(list(rows.values()), columns=[*SCALE_ROW, *comparison.sweeps])
    return frame.astype({name: float for name in comparison.sweeps})


def tuned_hparams_frame(comparison: Comparison) -> pd.DataFrame:
    """Each optimizer's tuned hyperparameters side by side: one row per (scale, hyperparameter), one column
    per optimizer; a name an optimizer does not have is left empty."""
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for optimizer, sweeps in comparison.sweeps.items():
        for sweep in sweeps:
            for hparam, value in sweep.best.items():
                key = (sweep.phase, str(sweep.scale["name"]), hparam)
                rows.setdefault(key, {"phase": key[0], "scale": key[1], "hyperparameter": hparam})[optimizer] = value
    scales = list(dict.fromkeys(key[:2] for key in rows))
    hparams = list(dict.fromkeys(key[2] for key in rows))  # each in one place at every scale
    ordered = sorted(rows, key=lambda key: (scales.index(key[:2]), hparams.index(key[2])))
    frame = pd.DataFrame([rows[key] for key in ordered], columns=["phase", "scale", "hyperparameter",
                                                                   *comparison.sweeps])
    return frame.astype({name: float for name in comparison.sweeps})


def interval_text(interval: Interval) -> str:
    """[low, high] to 3 significant digits; an upper bound AdamW's curve never reaches is unbounded."""
    low, high = interval
    if low is None and high is None:
        return "-"
    return f"[{'-' if low is None else f'{low:.3g}'}, {'unbounded' if high is None else f'{high:.3g}'}]"


def speedup_frame(result: SpeedupResult) -> pd.DataFrame:
    """One row per (optimizer, scale): its tuned loss, the data AdamW needs to reach it (D_eff), the speedup
    D_eff / D with its interval, in compute and wall-clock time, the noise behind the interval and where it
    came from, and whether (and how far) D_eff was extrapolated beyond AdamW's fitted data range."""
    reference = result.reference
    return pd.DataFrame(
        [
            {"optimizer": s.optimizer, "scale": s.scale, "N (non-emb.)": s.n_params, "D (tokens)": s.tokens,
             "tuned loss": s.loss, f"{reference} loss": s.reference_loss, "D_eff (tokens)": s.effective_tokens,
             "speedup": s.speedup, f"{result.level:.0%} interval": interval_text(s.interval),
             "compute speedup": s.compute_speedup, "wall-clock speedup": s.wall_clock_speedup,
             "extrapolated": s.extrapolated, "noise": s.noise, "noise source": s.noise_source,
             "note": (s.extrapolation or "") if s.speedup is not None else
             f"below {reference}'s asymptote c: no D_eff reaches it"}
            for s in result.speedups
        ],
        columns=["optimizer", "scale", "N (non-emb.)", "D (tokens)", "tuned loss", f"{reference} loss",
                 "D_eff (tokens)", "speedup", f"{result.level:.0%} interval", "compute speedup", "wall-clock speedup",
                 "extrapolated", "noise", "noise source", "note"],
    ).astype({"D_eff (tokens)": float, "speedup": float, f"{reference} loss": float, "noise": float,
              "compute speedup": float, "wall-clock speedup": float})


def speedup_points(result: SpeedupResult) -> pd.DataFrame:
    """The speedups as numbers for a figure: optimizer, n_params, tokens, speedup, low, high (NaN: unbounded),
    extrapolated; scales without a D_eff are left out (they have no speedup to draw)."""
    frame = pd.DataFrame(
        [{"optimizer": s.optimizer, "scale": s.scale, "n_params": s.n_params, "tokens": s.tokens,
          "speedup": s.speedup, "low": s.interval[0], "high": s.interval[1], "extrapolated": s.extrapolated}
         for s in result.speedups if s.speedup is not None],
        columns=["optimizer", "scale", "n_params", "tokens", "speedup", "low", "high", "extrapolated"],
    )
    return frame.astype({"speedup": float, "low": float, "high": float})


def reference_curve_lines(result: SpeedupResult, samples: int = 40) -> pd.DataFrame:
    """The reference's fitted L(D) per model size along D, from half its smallest to twice its largest data
    scale (and as far as any speedup's D_eff), and its asymptote c, for `plots.reference_curves`."""
    rows = []
    for curve in result.curves:
        reached = [s.effective_tokens for s in result.speedups if s.n_params == curve.n_params and s.effective_tokens]
        tokens = np.geomspace(min(curve.tokens) / 2, max([max(curve.tokens) * 2, *reached]), samples)
        rows += [{"n_params": curve.n_params, "tokens": d, "loss": curve.a * d**-curve.b + curve.c, "c": curve.c}
                 for d in tokens]
    return pd.DataFrame(rows)


def tuned_points(result: SpeedupResult) -> pd.DataFrame:
    """Every optimizer's tuned loss at each scale the speedup analysis used (the reference's first)."""
    rows = [{"optimizer": result.reference, "n_params": c.n_params, "tokens": d, "loss": loss}
            for c in result.curves for d, loss in zip(c.tokens, c.losses)]
    rows += [{"optimizer": s.optimizer, "n_params": s.n_params, "tokens": s.tokens, "loss": s.loss}
             for s in result.speedups]
    return pd.DataFrame(rows)


def reference_curves_frame(result: SpeedupResult) -> pd.DataFrame:
    """The reference's fitted L(D) = a D^-b + c per model size, each coefficient with its interval, the noise
    the bootstrap used and its source, the scales fitted (those beyond every other optimizer's data there
    named) and those left out."""
    level = f"{result.level:.0%} interval"
    return pd.DataFrame(
        [
            {"N (non-emb.)": c.n_params, "L(D)": f"{c.a:.3g} D^-{c.b:.3g} + {c.c:.3g}",
             "data scales (tokens)": ", ".join(f"{t:.3g}" for t in c.tokens),
             "a": c.a, f"a {level}": interval_text(c.a_interval), "b": c.b, f"b {level}": interval_text(c.b_interval),
             "c": c.c, f"c {level}": interval_text(c.c_interval), "residual SE": c.residual_se, "noise used": c.noise,
             "noise source": c.noise_source, "scales fitted": ", ".join(c.scales),
             "beyond the others' data": ", ".join(c.beyond_others), "left out": "; ".join(c.left_out)}
            for c in result.curves
        ]
    ).astype({"residual SE": float})


def speedup_verdicts_frame(result: SpeedupResult) -> pd.DataFrame:
    """The talk's claims as hypotheses, one row per (claim, optimizer): verdict, margin, estimate, interval."""
    return pd.DataFrame(
        [{"hypothesis": v.hypothesis, "optimizer": v.optimizer, "verdict": v.verdict, "margin": v.margin,
          "estimate": v.estimate, f"{result.level:.0%} interval": interval_text(v.interval), "at scale": v.scale,
          "why": v.why}
         for v in result.hypotheses],
        columns=["hypothesis", "optimizer", "verdict", "margin", "estimate", f"{result.level:.0%} interval",
                 "at scale", "why"],
    ).astype({"margin": float, "estimate": float})


def transfer_frame(comparison: Comparison) -> pd.DataFrame:
    """Each sweep's transferred optimum: the reference's best carried to this optimizer where the names match,
    its loss next to this optimizer's tuned loss (a positive cost: the optimum did not transfer)."""
    rows = []
    for optimizer in comparison.others:
        for sweep in comparison.sweeps[optimizer]:
            transfer = sweep.transfer
            if transfer:
                loss, tuned = transfer.loss, transfer.tuned_loss
                rows.append({"optimizer": optimizer, "phase": sweep.phase, "scale": sweep.scale["name"],
                             "carried from": transfer.source, "carried": ", ".join(transfer.carried),
                             "status": str(transfer.status), "loss with the carried values": loss, "tuned loss": tuned,
                             "cost of carrying": None if loss is None or tuned is None else loss - tuned})
    columns = ["optimizer", "phase", "scale", "carried from", "carried", "status", "loss with the carried values",
               "tuned loss", "cost of carrying"]
    return pd.DataFrame(rows, columns=columns).astype({c: float for c in columns[-3:]})


def optimizer_pages(comparison: Comparison, optimizer: str, reports: Path) -> str:
    """Markdown links (relative to `reports`, the report's folder) to the optimizer's HTML pages that exist."""
    own = comparison.paths[optimizer].reports
    pages = [("sensitivity", own / "sensitivity.html"), ("scaling laws", own / "scaling_law.html")]
    pages += [(f"{sweep.scale['name']} ({sweep.phase})", own / SWEEP_FOLDERS[sweep.phase] /
               f"{sweep.scale['name']}.html") for sweep in comparison.sweeps[optimizer]]
    links = [f"[{title}]({page.relative_to(reports).as_posix()})" for title, page in pages if page.is_file()]
    return f"**{optimizer}**: " + (" · ".join(links) if links else "no pages yet")
