"""The study's results as tables for the notebooks and the HTML report: everything is read from results/."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pandas.io.formats.style import Styler

from .analysis import predict
from .analysis.speedup import Interval, SpeedupResult
from .analysis.table import hparam_names
from .config import StudyParams, load_params
from .documents import require_one_identity
from .jsonio import read_json
from .paths import SWEEP_FOLDERS, ProjectPaths, enter_root

RESULTS = Path("results")

# The original study's reported optimum (reference/study-brief.md, "Results"), shown beside ours for
# comparison. lr is stated at width 512, so it is compared as lr x width.
BRIEF_REPORTED: dict[str, str] = {
    "lr": "1.6e-2 at width 512 (lr x width = 8.2)",
    "min_lr_ratio": "0",
    "warmup": "2000 steps",
    "beta1": "0.9",
    "beta2": "0.95",
    "weight_decay": "0.1",
    "eps": "1e-15",
    "clip": "1.0",
    "batch_size": "-",
}


def optimizer_study(optimizer: str = "", params_file: str = "") -> tuple[ProjectPaths, StudyParams]:
    """The paths and params of one optimizer's study ("": the study's own; else a key of params
    `optimizers`), after entering the project root. A notebook's `optimizer` parameter comes here."""
    paths = enter_root()
    params = load_params(params_file or paths.params)
    if not optimizer:
        return paths, params
    return paths.of_optimizer(optimizer), params.for_optimizer(optimizer)


def study_sweeps(paths: ProjectPaths, params: StudyParams) -> list[dict[str, Any]]:
    """One optimizer's sweep results of both phases (see `load_sweeps`), phase 1 first."""
    return load_sweeps(paths.sweeps("phase1"), list(params.scales)) + load_sweeps(
        paths.sweeps("law"), list(params.law_scales)
    )


def load_sweeps(folder: Path, names: list[str]) -> list[dict[str, Any]]:
    """The sweep results of the named scales (files of scales not in the params are ignored), checked to share
    one data hash and trainer identity."""
    sweeps = [read_json(folder / f"{name}.json") for name in names if (folder / f"{name}.json").is_file()]
    require_one_identity(sweeps)
    return sweeps


def slices_frame(sweeps: list[dict[str, Any]]) -> pd.DataFrame:
    """Long table of each sweep's final 1-D slices: scale, hparam, value, loss, status, delta to the best."""
    rows = []
    for sweep in sweeps:
        for hparam, points in sweep["slices"].items():
            for point in points:
                rows.append({"scale": sweep["scale"]["name"], "hparam": hparam, **point})
    frame = pd.DataFrame(rows, columns=["scale", "hparam", "value", "loss", "status"])
    frame["loss"] = pd.to_numeric(frame["loss"])
    best = {sweep["scale"]["name"]: sweep["best_loss"] for sweep in sweeps}
    frame["delta_loss"] = frame["loss"] - frame["scale"].map(best)
    return frame


def sweep_summary_frame(sweeps: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per swept scale: size, budget, best loss, runs, convergence."""
    return pd.DataFrame(
        [
            {
                "scale": s["scale"]["name"],
                "phase": s["phase"],
                "width": s["scale"]["width"],
                "depth": s["scale"]["depth"],
                "N (non-emb.)": s["scale"]["n_params"],
                "D (tokens)": s["scale"]["tokens"],
                "steps": s["scale"]["steps"],
                "free": ", ".join(s["free"]),
                "runs": len([r for r in s["runs"] if r["status"] != "skipped"]),
                "passes": s["passes"],
                "converged": s["converged"],
                "best loss": s["best_loss"],
            }
            for s in sweeps
        ]
    )


def compute_summary(sweeps: list[dict[str, Any]]) -> dict[str, str]:
    """Distinct trained runs and their compute over all sweeps (a run shared by two sweeps counts once)."""
    runs = {r["key"]: r for s in sweeps for r in s["runs"] if r["status"] in ("ok", "diverged")}
    results = [r.get("result") or {} for r in runs.values()]
    return {
        "runs trained": f"{len(runs)}",
        "of which diverged": f"{sum(r['status'] == 'diverged' for r in runs.values())}",
        "tokens": f"{sum(x.get('tokens', 0) for x in results):.3g}",
        "training FLOPs": f"{sum(x.get('flops', 0) for x in results):.3g}",
        "run time, summed over workers": f"{sum(x.get('wall_s', 0) for x in results) / 60:.1f} min",
    }


def recommended_frame(sensitivity: dict[str, Any], laws: dict[str, Any]) -> pd.DataFrame:
    """Our recommendation per hyperparameter (a fitted law or a constant) next to the brief's values."""
    rows = []
    for hparam, verdict in sensitivity["hyperparameters"].items():
        if hparam in laws.get("laws", {}):
            ours = laws["laws"][hparam]["form"]
        elif hparam in sensitivity.get("recommended", {}):
            rec = sensitivity["recommended"][hparam]
            ours = f"{rec['value']:.3g}"
            if rec.get("rule", "none") != "none":
                ours += f" at width {rec['reference_width']} ({rec['rule'].replace('_', ' ')})"
        else:
            ours = "-"
        rows.append(
            {
                "hyperparameter": hparam,
                "verdict": verdict.get("verdict", "sensitive" if verdict["sensitive"] else "insensitive"),
                "recommended (this study)": ours,
                "original study (brief)": BRIEF_REPORTED.get(hparam, "-"),
                "reason": verdict.get("reason", ""),
            }
        )
    order = {h: i for i, h in enumerate(hparam_names())}
    return pd.DataFrame(rows).sort_values("hyperparameter", key=lambda s: s.map(order)).reset_index(drop=True)


def provenance_frame(params: StudyParams, sweeps: list[dict[str, Any]]) -> pd.DataFrame:
    """Preset, params hash, data hash, code version and dates, as recorded by the sweeps themselves."""
    recorded = [s["provenance"] for s in sweeps]
    values = {
        "preset": params.study.name,
        "params hash (now)": params.params_hash(),
        "params hash (sweeps)": ", ".join(sorted({p.get("params_hash", "?") for p in recorded})),
        "data hash": ", ".join(sorted({str(p.get("data_hash")) for p in recorded})),
        "trainer": ", ".join(sorted({str(p.get("trainer")) for p in recorded})),
        "code version": ", ".join(sorted({p.get("code_version", "?") for p in recorded})),
        "seed": ", ".join(sorted({str(p.get("seed")) for p in recorded})),
        "sweeps run": f"{min(p['created'] for p in recorded)} .. {max(p['created'] for p in recorded)}",
    }
    return pd.DataFrame({"": list(values), "value": list(values.values())})


def sensitivity_frame(sensitivity: dict[str, Any]) -> pd.DataFrame:
    """One row per hyperparameter: the verdict with its margin and the noise it was judged against, both
    standards, the cause, the original study's rule (and why it differs), and why."""
    return pd.DataFrame(
        [
            {"hyperparameter": h, "verdict": v["verdict"], "margin": v["margin"],
             "p (Holm)": v.get("p_holm"), "noise of a difference": v["noise"],
             "loss sensitive": v["loss_sensitive"], "optimum shifts": v["optimum_shifts"],
             "shift cause": v["shift_cause"], "original rule: stable": v["original_rule"]["stable"],
             "original rule differs because": v["original_rule"].get("why_differs") or "", "reason": v["reason"]}
            for h, v in sensitivity["hyperparameters"].items()
        ]
    )


def noise_frame(sensitivity: dict[str, Any]) -> pd.DataFrame:
    """Per scale: the noise the verdicts were judged against, its source, the threshold, and how many runs the
    divergence rule marked."""
    noise, thresholds = sensitivity["noise"], sensitivity["threshold"]["per_scale"]
    return pd.DataFrame(
        [
            {"scale": scale, "best loss": info["best_loss"], "runs": info["runs"],
             "blown up (marked diverged)": sensitivity["blown_up"]["per_scale"].get(scale, 0),
             "noise of one config": noise["per_scale"][scale]["config_std"],
             "noise of a difference": noise["per_scale"][scale]["difference_std"],
             "noise source": noise.get("source", "seeds"), "threshold": thresholds[scale]}
            for scale, info in sensitivity["scales"].items()
        ]
    )


def analysis_warnings(sensitivity: dict[str, Any], laws: dict[str, Any] | None = None) -> str:
    """Which noise the verdicts were judged against, then the analysis' warnings, as a Markdown list ("" when
    there is neither), for the top of a report."""
    found = [*sensitivity.get("warnings", []), *((laws or {}).get("warnings", []))]
    noise = sensitivity.get("noise") or {}
    source = [f"- noise source: **{noise['source']}** ({noise['relative_std']:.3%} of the loss per config)"
              ] if noise.get("source") else []
    return "\n".join([*source, *(f"- **warning**: {w}" for w in found)])


def law_forms_frame(law: dict[str, Any]) -> pd.DataFrame:
    """Each law form that was fitted, with its leave-one-out error; the chosen one marked."""
    return pd.DataFrame(
        [{"form": k, "law": f["form"], "leave-one-out RMSE (log)": f["loo_rmse"], "chosen": k == law["kind"]}
         for k, f in law.get("forms", {}).items()]
    )


def hypotheses_frame(sensitivity: dict[str, Any]) -> pd.DataFrame:
    """The brief's conjectures with our verdict, the reason, and the numbers behind it."""
    rows = []
    for answer in sensitivity["hypotheses"]:
        evidence = dict(answer["evidence"])
        why = evidence.pop("why", "")
        rows.append({"hypothesis": answer["hypothesis"], "verdict": answer["verdict"],
                     "sensitivity verdict": answer.get("sensitivity_verdict") or "-", "why": why,
                     "numbers": json.dumps(evidence, default=str) if evidence else ""})
    return pd.DataFrame(rows)


def styled(frame: pd.DataFrame, digits: int = 4) -> Styler:
    """A table for the HTML report: no index column, floats to `digits` significant digits."""
    floats = {c: f"{{:.{digits}g}}" for c in frame.columns if pd.api.types.is_float_dtype(frame[c])}
    return frame.style.hide(axis="index").format(floats, na_rep="-")


def law_curves(laws: dict[str, Any], hparam: str, samples: int = 30) -> pd.DataFrame:
    """The fitted law for `hparam` with its 95% interval along N, at each token budget it was fitted on."""
    points = pd.DataFrame(laws["laws"][hparam]["points"])
    width = int(points["width"].median())  # only constants with a width rule read it
    n_grid = np.geomspace(points["n_params"].min() / 1.5, points["n_params"].max() * 1.5, samples)
    rows = []
    for tokens in sorted(points["tokens"].unique()):
        for n_params in n_grid:
            prediction = predict(laws, n_params=n_params, tokens=tokens, width=width)
            lower, upper = prediction["intervals"][hparam]
            rows.append({"tokens": tokens, "n_params": n_params, "estimate": prediction["hparams"][hparam],
                         "lower": lower, "upper": upper})
    return pd.DataFrame(rows)


# --- other optimizers against the tuned AdamW (params `optimizers`, results/speedup.json) ------------------


@dataclass(frozen=True)
class Comparison:
    """The other optimizers' studies next to the reference's (the tuned AdamW) and their speedups over it."""

    speedup: SpeedupResult
    sweeps: dict[str, list[dict[str, Any]]]  # optimizer -> its sweeps of both phases; the reference first
    paths: dict[str, ProjectPaths]  # optimizer -> where its results and reports live

    @property
    def others(self) -> list[str]:
        return [name for name in self.sweeps if name != self.speedup.reference]

    def every_sweep(self) -> list[dict[str, Any]]:
        return [sweep for sweeps in self.sweeps.values() for sweep in sweeps]


def load_comparison(paths: ProjectPaths, params: StudyParams, own_sweeps: list[dict[str, Any]]) -> Comparison | None:
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


def _scale_row(sweep: dict[str, Any]) -> dict[str, Any]:
    scale = sweep["scale"]
    return {"phase": sweep["phase"], "scale": scale["name"], "N (non-emb.)": scale["n_params"],
            "D (tokens)": scale["tokens"]}


def tuned_loss_frame(comparison: Comparison) -> pd.DataFrame:
    """One row per scale, one column per optimizer: its tuned (best) held-out loss there ("-": not swept, or
    every run diverged)."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for optimizer, sweeps in comparison.sweeps.items():
        for sweep in sweeps:
            rows.setdefault((sweep["phase"], sweep["scale"]["name"]), _scale_row(sweep))[optimizer] = sweep["best_loss"]
    frame = pd.DataFrame(list(rows.values()), columns=[*SCALE_ROW, *comparison.sweeps])
    return frame.astype({name: float for name in comparison.sweeps})


def tuned_hparams_frame(comparison: Comparison) -> pd.DataFrame:
    """Each optimizer's tuned hyperparameters side by side: one row per (scale, hyperparameter), one column
    per optimizer; a name an optimizer does not have is left empty."""
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for optimizer, sweeps in comparison.sweeps.items():
        for sweep in sweeps:
            for hparam, value in sweep["best"].items():
                key = (sweep["phase"], sweep["scale"]["name"], hparam)
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
    D_eff / D with its interval, and whether D_eff was extrapolated beyond AdamW's fitted data range."""
    reference = result.reference
    return pd.DataFrame(
        [
            {"optimizer": s.optimizer, "scale": s.scale, "N (non-emb.)": s.n_params, "D (tokens)": s.tokens,
             "tuned loss": s.loss, f"{reference} loss": s.reference_loss, "D_eff (tokens)": s.effective_tokens,
             "speedup": s.speedup, f"{result.level:.0%} interval": interval_text(s.interval),
             "extrapolated": s.extrapolated, "noise": s.noise,
             "note": "" if s.speedup is not None else f"below {reference}'s asymptote c: no D_eff reaches it"}
            for s in result.speedups
        ],
        columns=["optimizer", "scale", "N (non-emb.)", "D (tokens)", "tuned loss", f"{reference} loss",
                 "D_eff (tokens)", "speedup", f"{result.level:.0%} interval", "extrapolated", "noise", "note"],
    ).astype({"D_eff (tokens)": float, "speedup": float, f"{reference} loss": float, "noise": float})


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
    """The reference's fitted L(D) = a D^-b + c per model size, each coefficient with its interval."""
    level = f"{result.level:.0%} interval"
    return pd.DataFrame(
        [
            {"N (non-emb.)": c.n_params, "L(D)": f"{c.a:.3g} D^-{c.b:.3g} + {c.c:.3g}",
             "data scales (tokens)": ", ".join(f"{t:.3g}" for t in c.tokens),
             "a": c.a, f"a {level}": interval_text(c.a_interval), "b": c.b, f"b {level}": interval_text(c.b_interval),
             "c": c.c, f"c {level}": interval_text(c.c_interval), "residual SE": c.residual_se, "noise used": c.noise}
            for c in result.curves
        ]
    ).astype({"residual SE": float})


def speedup_verdicts_frame(result: SpeedupResult) -> pd.DataFrame:
    """The talk's claims as hypotheses, one row per (claim, optimizer): verdict, margin, estimate, interval."""
    return pd.DataFrame(
        [{"hypothesis": v.hypothesis, "optimizer": v.optimizer, "verdict": v.verdict, "margin": v.margin,
          "estimate": v.estimate, f"{result.level:.0%} interval": interval_text(v.interval), "why": v.why}
         for v in result.hypotheses],
        columns=["hypothesis", "optimizer", "verdict", "margin", "estimate", f"{result.level:.0%} interval", "why"],
    ).astype({"margin": float, "estimate": float})


def transfer_frame(comparison: Comparison) -> pd.DataFrame:
    """Each sweep's transferred optimum: the reference's best carried to this optimizer where the names match,
    its loss next to this optimizer's tuned loss (a positive cost: the optimum did not transfer)."""
    rows = []
    for optimizer in comparison.others:
        for sweep in comparison.sweeps[optimizer]:
            transfer = sweep.get("transfer")
            if transfer:
                loss, tuned = transfer["loss"], transfer["tuned_loss"]
                rows.append({"optimizer": optimizer, "phase": sweep["phase"], "scale": sweep["scale"]["name"],
                             "carried from": transfer["source"], "carried": ", ".join(transfer["carried"]),
                             "status": transfer["status"], "loss with the carried values": loss, "tuned loss": tuned,
                             "cost of carrying": None if loss is None or tuned is None else loss - tuned})
    columns = ["optimizer", "phase", "scale", "carried from", "carried", "status", "loss with the carried values",
               "tuned loss", "cost of carrying"]
    return pd.DataFrame(rows, columns=columns).astype({c: float for c in columns[-3:]})


def optimizer_pages(comparison: Comparison, optimizer: str, reports: Path) -> str:
    """Markdown links (relative to `reports`, the report's folder) to the optimizer's HTML pages that exist."""
    own = comparison.paths[optimizer].reports
    pages = [("sensitivity", own / "sensitivity.html"), ("scaling laws", own / "scaling_law.html")]
    pages += [(f"{sweep['scale']['name']} ({sweep['phase']})", own / SWEEP_FOLDERS[sweep["phase"]] /
               f"{sweep['scale']['name']}.html") for sweep in comparison.sweeps[optimizer]]
    links = [f"[{title}]({page.relative_to(reports).as_posix()})" for title, page in pages if page.is_file()]
    return f"**{optimizer}**: " + (" · ".join(links) if links else "no pages yet")
