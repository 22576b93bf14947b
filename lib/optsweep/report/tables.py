"""The sensitivity analysis and the scaling laws as tables: verdicts, reasons, noise, law forms, hypotheses."""

from __future__ import annotations

import html
from typing import Any

import numpy as np
import pandas as pd
from pandas.io.formats.style import Styler

from ..analysis import predict
from ..results.documents import HparamLaw, HparamVerdict, ScalingLaws, SensitivityResult


def sensitivity_frame(sensitivity: SensitivityResult) -> pd.DataFrame:
    """One row per hyperparameter: the verdict with its margin and the noise it was judged against, both
    standards, the cause, whether the original study's rule finds it stable, and the short reason (the full
    one, and why the original rule differs, are in `reasons_details`)."""
    return pd.DataFrame(
        [
            {"hyperparameter": h, "verdict": v.verdict, "margin": v.margin,
             "p (Holm)": v.p_holm, "noise of a difference": v.noise,
             "loss sensitive": v.loss_sensitive, "optimum shifts": v.optimum_shifts,
             "shift cause": v.shift_cause, "original rule: stable": v.original_rule.stable if v.original_rule else None,
             "reason": short_reason(h, v)}
            for h, v in sensitivity.hyperparameters.items()
        ]
    )


def reasons_details(sensitivity: SensitivityResult) -> str:
    """Every verdict's full reason, and why the original study's rule differs where it does, as a collapsed
    HTML <details> block: the tables show only the short clause."""
    items = []
    for verdict in sensitivity.hyperparameters.values():
        differs = verdict.original_rule.why_differs if verdict.original_rule else None
        text = verdict.reason + (f" Original rule: {differs}." if differs else "")
        items.append(f"<li>{html.escape(text)}</li>")
    return f"<details><summary>Full reasons</summary><ul>{''.join(items)}</ul></details>"


def noise_frame(sensitivity: SensitivityResult) -> pd.DataFrame:
    """Per scale: the noise the verdicts were judged against, its source, the threshold, and how many runs the
    divergence rule marked."""
    noise, thresholds = sensitivity.noise, sensitivity.threshold.per_scale
    per_scale = noise.per_scale if noise else {}
    return pd.DataFrame(
        [
            {"scale": scale, "best loss": info.best_loss, "runs": info.runs,
             "blown up (marked diverged)": sensitivity.blown_up.per_scale.get(scale, 0),
             "noise of one config": per_scale[scale].config_std if scale in per_scale else None,
             "noise of a difference": per_scale[scale].difference_std if scale in per_scale else None,
             "noise source": (noise.source if noise else None) or "seeds", "threshold": thresholds[scale]}
            for scale, info in sensitivity.scales.items()
        ]
    )


def analysis_warnings(sensitivity: SensitivityResult | None, laws: ScalingLaws | None = None) -> str:
    """Which noise the verdicts were judged against, then the analysis' warnings, as a Markdown list ("" when
    there is neither), for the top of a report."""
    found = [*(sensitivity.warnings if sensitivity else []), *(laws.warnings if laws else [])]
    noise = sensitivity.noise if sensitivity else None
    source = [f"- noise source: **{noise.source}** ({noise.relative_std:.3%} of the loss per config)"
              ] if noise and noise.source else []
    return "\n".join([*source, *(f"- **warning**: {w}" for w in found)])


def law_forms_frame(law: HparamLaw) -> pd.DataFrame:
    """Each law form that was fitted, with its leave-one-out error; the chosen one marked."""
    return pd.DataFrame(
        [{"form": k, "law": f.form, "leave-one-out RMSE (log)": f.loo_rmse, "chosen": k == law.kind}
         for k, f in law.forms.items()]
    )


def hypotheses_frame(sensitivity: SensitivityResult) -> pd.DataFrame:
    """The brief's conjectures with our verdict, the reason, and the key numbers behind it as short text."""
    rows = []
    for answer in sensitivity.hypotheses:
        evidence = dict(answer.evidence)
        why = evidence.pop("why", "")
        rows.append({"hypothesis": answer.hypothesis, "verdict": answer.verdict,
                     "sensitivity verdict": answer.sensitivity_verdict or "-", "why": why,
                     "numbers": evidence_text(evidence)})
    return pd.DataFrame(rows, columns=["hypothesis", "verdict", "sensitivity verdict", "why", "numbers"])


# Evidence the hypotheses table leaves out: the full sensitivity reason and the thresholds (both in the
# sensitivity tables) and the sensitivity verdict (its own column).
EVIDENCE_LEFT_OUT = frozenset({"reason", "thresholds", "threshold", "sensitivity"})


def evidence_text(evidence: dict[str, Any]) -> str:
    """The numbers behind a hypothesis as short text: numbers to 3 significant digits, a mapping per scale or
    rule as "name value" pairs, a pair of scales as "shorter -> longer (numbers)"."""
    return "; ".join(f"{_label(key)}: {_value_text(value)}" for key, value in evidence.items()
                     if key not in EVIDENCE_LEFT_OUT and value not in (None, "", [], {}))


def _label(key: str) -> str:
    return key.replace("_", " ")


def _value_text(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, (int, float)):
        return f"{value:.3g}"
    if isinstance(value, str):
        return _label(value)
    if isinstance(value, dict):
        names = [str(v) for k, v in value.items() if isinstance(v, str) and k not in EVIDENCE_LEFT_OUT]
        numbers = ", ".join(f"{_label(k)} {_value_text(v)}" for k, v in value.items()
                            if not isinstance(v, str) and k not in EVIDENCE_LEFT_OUT)
        return f"{' -> '.join(names)} ({numbers})" if names else numbers
    return "; ".join(_value_text(item) for item in value)


def styled(frame: pd.DataFrame, digits: int = 4) -> Styler:
    """A table for the HTML report: no index column, floats to `digits` significant digits, text left-aligned
    (a right-aligned sentence is hard to read)."""
    floats = {c: f"{{:.{digits}g}}" for c in frame.columns if pd.api.types.is_float_dtype(frame[c])}
    text = [c for c in frame.columns if pd.api.types.is_string_dtype(frame[c])]
    table = frame.style.hide(axis="index").format(floats, na_rep="-")
    return table.set_properties(subset=text, **{"text-align": "left"})


def law_curves(laws: ScalingLaws, hparam: str, samples: int = 30) -> pd.DataFrame:
    """The fitted law for `hparam` with its 95% interval, along N at each token budget it was fitted on
    (`along` "N") and along D at each model size (`along` "D"), from 1/1.5 of the smallest to 1.5 x the
    largest fitted value."""
    points = pd.DataFrame([point.model_dump(mode="json") for point in laws.laws[hparam].points])
    width = int(points["width"].median())  # only constants with a width rule read it

    def spread(column: str) -> np.ndarray:
        return np.geomspace(points[column].min() / 1.5, points[column].max() * 1.5, samples)

    rows = []
    for along, moving, fixed in (("N", "n_params", "tokens"), ("D", "tokens", "n_params")):
        for held in sorted(points[fixed].unique()):
            for value in spread(moving):
                at = {moving: value, fixed: held}
                prediction = predict(laws, n_params=at["n_params"], tokens=at["tokens"], width=width)
                lower, upper = prediction.intervals[hparam]
                rows.append({"along": along, "tokens": at["tokens"], "n_params": at["n_params"],
                             "estimate": prediction.hparams[hparam], "lower": lower, "upper": upper})
    return pd.DataFrame(rows)


def verdict_clause(hparam: str, reason: str) -> str:
    """The verdict clause of a sensitivity reason: "lr: not sensitive, one value serves every scale: numbers"
    -> "not sensitive, one value serves every scale"."""
    return reason.removeprefix(f"{hparam}: ").split(":", 1)[0].strip().rstrip(".")


def grid_edges(verdict: HparamVerdict) -> list[str]:
    """The scales whose optimum lies at the grid edge (a bound: the true optimum is beyond it)."""
    return list(verdict.evidence.at_edge)


def short_reason(hparam: str, verdict: HparamVerdict) -> str:
    """A verdict's reason for a table: its clause, and the scales whose optimum lies at the grid edge."""
    edges = grid_edges(verdict)
    return verdict_clause(hparam, verdict.reason) + (f"; at the grid edge at {', '.join(edges)}" if edges else "")
