"""The study's results as tables for the notebooks and the HTML report: everything is read from results/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pandas.io.formats.style import Styler

from .analysis import predict
from .config import ALL_HPARAMS, ParamsError, StudyParams
from .documents import TRAINING_IDENTITY
from .jsonio import read_json

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


def load_sweeps(folder: Path, names: list[str]) -> list[dict[str, Any]]:
    """The sweep results of the named scales (files of scales not in the params are ignored), checked to share
    one data hash and trainer identity."""
    sweeps = [read_json(folder / f"{name}.json") for name in names if (folder / f"{name}.json").is_file()]
    require_one_identity(sweeps)
    return sweeps


def require_one_identity(sweeps: list[dict[str, Any]]) -> None:
    """Sweeps that feed one analysis must have trained on the same data with the same training code."""
    for part in TRAINING_IDENTITY:
        seen: dict[Any, list[str]] = {}
        for sweep in sweeps:
            seen.setdefault(sweep["provenance"].get(part), []).append(sweep["scale"]["name"])
        if len(seen) > 1:
            groups = "; ".join(f"{', '.join(names)}: {value}" for value, names in seen.items())
            raise ParamsError(f"sweeps disagree on {part} ({groups}); re-run the stale scales' sweeps")


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
    order = {h: i for i, h in enumerate(ALL_HPARAMS)}
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
             "required margin (z x noise)": v["required_margin"], "noise of a difference": v["noise"],
             "loss sensitive": v["loss_sensitive"], "optimum shifts": v["optimum_shifts"],
             "shift cause": v["shift_cause"], "original rule: stable": v["original_rule"]["stable"],
             "original rule differs because": v["original_rule"].get("why_differs") or "", "reason": v["reason"]}
            for h, v in sensitivity["hyperparameters"].items()
        ]
    )


def noise_frame(sensitivity: dict[str, Any]) -> pd.DataFrame:
    """Per scale: the measured noise, the threshold it floors, and how many runs the divergence rule marked."""
    noise, thresholds = sensitivity["noise"], sensitivity["threshold"]["per_scale"]
    return pd.DataFrame(
        [
            {"scale": scale, "best loss": info["best_loss"], "runs": info["runs"],
             "blown up (marked diverged)": sensitivity["blown_up"]["per_scale"].get(scale, 0),
             "noise of one config": noise["per_scale"][scale]["config_std"],
             "noise of a difference": noise["per_scale"][scale]["difference_std"],
             "surface scatter": noise["per_scale"][scale]["surface_std"], "threshold": thresholds[scale]}
            for scale, info in sensitivity["scales"].items()
        ]
    )


def analysis_warnings(sensitivity: dict[str, Any], laws: dict[str, Any] | None = None) -> str:
    """The analysis' warnings as a Markdown list ("" when there are none), for the top of a report."""
    found = [*sensitivity.get("warnings", []), *((laws or {}).get("warnings", []))]
    return "\n".join(f"- **warning**: {w}" for w in found)


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
