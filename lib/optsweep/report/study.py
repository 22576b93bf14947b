"""One optimizer's study as the notebooks read it: its paths and params, its sweeps, and the tables of its
sweeps (slices, summary, compute, recommended values, provenance)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..analysis.table import hparam_names
from ..params.paths import ProjectPaths, enter_root
from ..params.settings import StudyParams, load_params
from ..results.documents import ScalingLaws, SensitivityResult, SweepResult, read_document, require_one_identity
from ..runs.store import RunStatus
from .tables import short_reason

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


def study_sweeps(paths: ProjectPaths, params: StudyParams) -> list[SweepResult]:
    """One optimizer's sweep results of both phases (see `load_sweeps`), phase 1 first."""
    return load_sweeps(paths.sweeps("phase1"), list(params.scales)) + load_sweeps(
        paths.sweeps("law"), list(params.law_scales)
    )


def load_sweeps(folder: Path, names: list[str]) -> list[SweepResult]:
    """The sweep results of the named scales (files of scales not in the params are ignored), each validated
    (`read_document`: a bad file is one line naming it and the field), checked to share one data hash and
    trainer identity."""
    sweeps = [read_document(folder / f"{name}.json", SweepResult) for name in names
              if (folder / f"{name}.json").is_file()]
    require_one_identity(sweeps)
    return sweeps


def slices_frame(sweeps: list[SweepResult]) -> pd.DataFrame:
    """Long table of each sweep's final 1-D slices: scale, hparam, value, loss, status, delta to the best."""
    rows = []
    for sweep in sweeps:
        for hparam, points in sweep.slices.items():
            for point in points:
                rows.append({"scale": sweep.scale["name"], "hparam": hparam, "value": point.value, "loss": point.loss,
                             "status": str(point.status)})
    frame = pd.DataFrame(rows, columns=["scale", "hparam", "value", "loss", "status"])
    frame["loss"] = pd.to_numeric(frame["loss"])
    best = {sweep.scale["name"]: sweep.best_loss for sweep in sweeps}
    frame["delta_loss"] = frame["loss"] - frame["scale"].map(best)
    return frame


def sweep_summary_frame(sweeps: list[SweepResult]) -> pd.DataFrame:
    """One row per swept scale: size, budget, best loss, runs, convergence."""
    return pd.DataFrame(
        [
            {
                "scale": s.scale["name"],
                "phase": s.phase,
                "width": s.scale["width"],
                "depth": s.scale["depth"],
                "N (non-emb.)": s.scale["n_params"],
                "D (tokens)": s.scale["tokens"],
                "steps": s.scale["steps"],
                "free": ", ".join(s.free),
                "runs": len([r for r in s.runs if r.status != RunStatus.SKIPPED]),
                "passes": s.passes,
                "converged": s.converged,
                "best loss": s.best_loss,
            }
            for s in sweeps
        ]
    )


def compute_summary(sweeps: list[SweepResult]) -> dict[str, str]:
    """Distinct trained runs and their compute over all sweeps (a run shared by two sweeps counts once)."""
    runs = {r.key: r for s in sweeps for r in s.runs if r.status in (RunStatus.OK, RunStatus.DIVERGED)}
    results = [r.result or {} for r in runs.values()]  # what the trainer returned, as it returned it
    return {
        "runs trained": f"{len(runs)}",
        "of which diverged": f"{sum(r.status == RunStatus.DIVERGED for r in runs.values())}",
        "tokens": f"{sum(x.get('tokens', 0) for x in results):.3g}",
        "training FLOPs": f"{sum(x.get('flops', 0) for x in results):.3g}",
        "run time, summed over workers": f"{sum(x.get('wall_s', 0) for x in results) / 60:.1f} min",
    }


def recommended_frame(sensitivity: SensitivityResult, laws: ScalingLaws) -> pd.DataFrame:
    """Our recommendation per hyperparameter (a fitted law or a constant) next to the brief's values."""
    rows = []
    for hparam, verdict in sensitivity.hyperparameters.items():
        if hparam in laws.laws:
            ours = laws.laws[hparam].form
        elif hparam in sensitivity.recommended:
            rec = sensitivity.recommended[hparam]
            ours = f"{rec.value:.3g}"
            if rec.rule != "none":
                ours += f" at width {rec.reference_width} ({rec.rule.replace('_', ' ')})"
        else:
            ours = "-"
        rows.append(
            {
                "hyperparameter": hparam,
                "verdict": verdict.verdict,
                "recommended (this study)": ours,
                "original study (brief)": BRIEF_REPORTED.get(hparam, "-"),
                "reason": short_reason(hparam, verdict),
            }
        )
    order = {h: i for i, h in enumerate(hparam_names())}
    return pd.DataFrame(rows).sort_values("hyperparameter", key=lambda s: s.map(order)).reset_index(drop=True)


def provenance_frame(params: StudyParams, sweeps: list[SweepResult]) -> pd.DataFrame:
    """Preset, params hash, data hash, code version and dates, as recorded by the sweeps themselves."""
    recorded = [s.provenance for s in sweeps]
    values = {
        "preset": params.study.name,
        "params hash (now)": params.params_hash(),
        "params hash (sweeps)": ", ".join(sorted({str(p.params_hash or "?") for p in recorded})),
        "data hash": ", ".join(sorted({str(p.recorded("data_hash")) for p in recorded})),
        "trainer": ", ".join(sorted({str(p.recorded("trainer")) for p in recorded})),
        "code version": ", ".join(sorted({p.code_version for p in recorded})),
        "seed": ", ".join(sorted({str(p.recorded("seed")) for p in recorded})),
        "sweeps run": f"{min(p.created for p in recorded)} .. {max(p.created for p in recorded)}",
    }
    return pd.DataFrame({"": list(values), "value": list(values.values())})
