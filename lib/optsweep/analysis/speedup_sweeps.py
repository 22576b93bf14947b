"""Speedups from sweep results: every optimizer's tuned loss per scale, checked to share one training identity,
and whether the reference's optimum transfers to the other optimizers (the gap its carried config leaves)."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import norm

from ..axes import declare_axes
from ..params.sections import DEFAULT_SPEEDUP_TARGETS, SpeedupTarget
from ..params.settings import ParamsError
from ..results.documents import SweepResult, require_one_identity
from ..results.speedup_documents import TuningBudget, Unjudged
from ..runs.store import RunStatus
from .hypotheses import CONTRADICTED, INCONCLUSIVE, SUPPORTED
from .speedup import (
    BOOTSTRAP,
    NOISE_FLOOR,
    REFERENCE,
    TRANSFER,
    SpeedupResult,
    TransferGap,
    Verdict,
    compute_speedup,
)
from .speedup_noise import Measured, NoiseRule


def speedup_from_sweeps(
    sweeps: dict[str, list[SweepResult]],
    reference: str = REFERENCE,
    noise_floor: float = NOISE_FLOOR,
    replicates: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    relative_noise: Mapping[str, Measured] | None = None,
    stated_noise: float | None = None,
    targets: Sequence[SpeedupTarget] = DEFAULT_SPEEDUP_TARGETS,
) -> SpeedupResult:
    """Speedups from each optimizer's sweep results (both phases; keys: the optimizers' names), and the
    talk's claims judged, "optimal hyperparameters do not transfer" among them (`hparams_do_not_transfer`).
    `relative_noise`: per optimizer, the relative std of one config's loss its sensitivity analysis measured;
    `stated_noise` (analysis.speedup_noise): every run's noise instead; `targets`: where the size laws predict.

    A sweep's tuned loss is its `best_loss` at the size and data of its scale; a sweep without a finished
    run is left out (said in `skipped`). Every sweep must share one training identity (data, trainer and its
    code) apart from the optimizer. With no other optimizer than `reference` there is nothing to compare:
    the result has no rows and says so in `skipped`.
    """
    for results in sweeps.values():
        for sweep in results:
            declare_axes(sweep.axes)
    require_same_training(sweeps)
    rows, skipped = [], []
    for optimizer, results in sweeps.items():
        for sweep in results:
            scale = sweep.scale
            if sweep.best_loss is None:  # a row still: the reference's curve lists the scale as left out
                skipped.append(f"optimizer {optimizer} scale {scale['name']} ({sweep.phase}): no finished run")
            rows.append({"optimizer": optimizer, "scale": scale["name"], "n_params": scale["n_params"],
                         "tokens": scale["tokens"], "loss": math.nan if sweep.best_loss is None else sweep.best_loss,
                         **run_costs(sweep)})
    finished = {row["optimizer"] for row in rows if math.isfinite(row["loss"])}
    if not finished - {reference}:
        skipped.append(f"no other optimizer than {reference} has a finished sweep: nothing to compare")
        return SpeedupResult(reference=reference, level=level, noise_floor=noise_floor, stated_noise=stated_noise,
                             bootstrap=BOOTSTRAP, replicates=replicates, curves=[], speedups=[], skipped=skipped,
                             hypotheses=[], budgets=sweep_budgets(sweeps))
    if reference not in finished:
        raise ParamsError(f"sweeps: no finished sweep of the reference optimizer {reference!r}; "
                          f"found {', '.join(sorted(finished))}")
    rule = NoiseRule(noise_floor, stated_noise, relative_noise or {})
    result = compute_speedup(pd.DataFrame(rows), reference, noise_floor, replicates, level, seed, source="sweeps",
                             relative_noise=rule.measured, require_curve=False,  # a study says why, not fails
                             stated_noise=stated_noise, targets=tuple(targets))
    transfers, left_out = transfer_gaps(sweeps, reference, rule)
    hypotheses = list(result.hypotheses)
    unjudged = [claim for claim in result.unjudged if claim.hypothesis != TRANSFER]  # sweeps can judge it
    for optimizer in sorted(set(sweeps) - {reference}):
        mine = [gap for gap in transfers if gap.optimizer == optimizer]
        if mine:
            hypotheses.append(hparams_do_not_transfer(optimizer, mine, level))
        else:
            unjudged.append(Unjudged(hypothesis=TRANSFER, optimizer=optimizer, why=_no_transfer_why(
                optimizer, left_out, sweeps[optimizer])))
    hypotheses.sort(key=lambda verdict: verdict.optimizer)  # stable: each optimizer's claims together
    return result.model_copy(update={
        "skipped": [*skipped, *result.skipped, *left_out], "hypotheses": hypotheses, "transfers": transfers,
        "unjudged": sorted(unjudged, key=lambda claim: claim.optimizer), "budgets": sweep_budgets(sweeps),
    })


def _no_transfer_why(optimizer: str, left_out: list[str], results: list[SweepResult]) -> str:
    """Why no carried optimum of `optimizer` could be judged: each one left out, or none recorded."""
    mine = [line for line in left_out if line.startswith(f"optimizer {optimizer} ")]
    if mine:
        return "; ".join(mine)
    if not results:
        return "no sweep result"
    return "no sweep recorded a carried optimum (`transfer`)"


def run_costs(sweep: SweepResult) -> dict[str, float]:
    """The median FLOPs per token and tokens per second over the sweep's finished runs (NaN: not recorded)."""
    results = [run.result for run in sweep.runs if run.status == RunStatus.OK and run.result]
    flops = [r["flops"] / r["tokens"] for r in results if r.get("flops") and r.get("tokens")]
    speed = [r["tokens_per_s"] for r in results if r.get("tokens_per_s")]
    return {"flops_per_token": float(np.median(flops)) if flops else math.nan,
            "tokens_per_s": float(np.median(speed)) if speed else math.nan}


def sweep_budgets(sweeps: dict[str, list[SweepResult]]) -> list[TuningBudget]:
    """What each sweep spent (its `compute`: runs its result rests on, their FLOPs) beside its best loss."""
    return [TuningBudget(optimizer=optimizer, scale=str(sweep.scale["name"]), phase=sweep.phase,
                         runs=sweep.compute.runs_planned, flops=sweep.compute.flops, best_loss=sweep.best_loss)
            for optimizer, results in sweeps.items() for sweep in results]


def require_same_training(sweeps: dict[str, list[SweepResult]]) -> None:
    """Every sweep trained on the same data with the same trainer and training code, whatever its optimizer
    (one-line `ParamsError` naming the scales otherwise)."""
    pairs = [(optimizer, sweep) for optimizer, results in sweeps.items() for sweep in results]
    require_one_identity([sweep for _, sweep in pairs],
                         [f"{optimizer} {sweep.scale['name']}" for optimizer, sweep in pairs])


def transfer_gaps(
    sweeps: dict[str, list[SweepResult]], reference: str, rule: NoiseRule
) -> tuple[list[TransferGap], list[str]]:
    """Each carried optimum that was trained (`sweep.transfer`), with the noise of one run of that optimizer
    at its tuned loss and its source (`rule`); and a line for each one left out (nothing carried, or its
    run never finished)."""
    gaps, left_out = [], []
    for optimizer, results in sweeps.items():
        if optimizer == reference:
            continue
        for sweep in results:
            transfer, name = sweep.transfer, sweep.scale["name"]
            if transfer is None:
                continue
            status = str(transfer.status)
            diverged = status == "diverged"
            measured = status == "ok" and transfer.loss is not None and transfer.tuned_loss is not None
            if not transfer.carried or not (diverged or measured):
                why = "no hyperparameter name in common" if not transfer.carried else f"its run is {status}"
                left_out.append(f"optimizer {optimizer} scale {name}: {transfer.source}'s optimum not judged ({why})")
                continue
            noise, source = rule.of(optimizer, transfer.tuned_loss if transfer.tuned_loss is not None else 0.0)
            gaps.append(TransferGap(
                optimizer=optimizer, scale=name, phase=sweep.phase, n_params=float(sweep.scale["n_params"]),
                carried=transfer.carried, status=status, loss=transfer.loss, tuned_loss=transfer.tuned_loss,
                gap=None if diverged else transfer.loss - transfer.tuned_loss,
                noise=noise, noise_source=source,
            ))
    return gaps, left_out


def hparams_do_not_transfer(optimizer: str, gaps: list[TransferGap], level: float) -> Verdict:
    """The reference's optimum carried to `optimizer` (the names they share; the rest at the optimizer's own
    best) against the optimizer's tuned loss, at each scale where it was trained. The gap (carried loss minus
    tuned loss) of two runs has noise sqrt(2) x `noise` (one run's, as in the speedup's bootstrap), and z is
    the two-sided normal quantile of `level`, as for the intervals. The rule:

    - supported when the carried config diverged at some scale (it does not transfer at all), or when some
      scale's gap exceeds z * sqrt(2) * noise (significant); margin: the gap minus that;
    - contradicted when at every scale |gap| <= noise: carrying the optimum costs no more than one run's
      noise anywhere. This is an equivalence by point estimate against a tolerance of one run's noise (the
      convention of the sensitivity verdicts), not a test: the interval of each gap (+- z * sqrt(2) * noise)
      is reported and is wider than the band. It speaks for the carried names only. margin: noise minus the
      largest |gap|;
    - inconclusive otherwise: a gap between the band and the significance bound, or a carried config that
      beat the optimizer's own best by more than the noise (its search missed a better config, so its
      tuned loss is not its optimum).

    The tuned loss is the best of many runs, biased low by selection, so the gap leans towards supported;
    runs under common random numbers make the true noise of a gap smaller than sqrt(2) x noise, which leans
    the other way (fewer gaps pass as significant).
    """
    text = TRANSFER
    z = float(norm.isf((1 - level) / 2))
    carried = ", ".join(dict.fromkeys(name for gap in gaps for name in gap.carried))

    def verdict(name: str, why: str, margin: float | None, deciding: TransferGap) -> Verdict:
        """The verdict with the deciding scale's gap as the estimate, +- z * sqrt(2) * noise around it."""
        spread = z * math.sqrt(2) * deciding.noise
        interval = (None, None) if deciding.gap is None else (deciding.gap - spread, deciding.gap + spread)
        return Verdict(hypothesis=text, optimizer=optimizer, verdict=name, why=f"{why} (carried: {carried})",
                       margin=margin, estimate=deciding.gap, interval=interval, noise=deciding.noise)

    diverged = [gap for gap in gaps if gap.gap is None]
    if diverged:
        scales = ", ".join(gap.scale for gap in diverged)
        return verdict(SUPPORTED, f"the carried optimum diverged at scale(s) {scales}", None, diverged[0])
    worst = max(gaps, key=lambda gap: gap.gap / gap.noise)
    required = z * math.sqrt(2) * worst.noise
    if worst.gap > required:
        why = (f"at scale {worst.scale} the carried optimum costs {worst.gap:.3g}, above z x sqrt(2) x noise = "
               f"{required:.3g} (z {z:.3g}, noise {worst.noise:.3g})")
        return verdict(SUPPORTED, why, worst.gap - required, worst)
    largest = max(gaps, key=lambda gap: abs(gap.gap) / gap.noise)
    if abs(largest.gap) <= largest.noise:
        why = (f"at every scale the carried optimum's loss is within one run's noise of the tuned loss (largest "
               f"gap {largest.gap:.3g} at scale {largest.scale}, noise {largest.noise:.3g})")
        return verdict(CONTRADICTED, why, largest.noise - abs(largest.gap), largest)
    if largest.gap < -largest.noise:
        why = (f"at scale {largest.scale} the carried optimum beat the tuned loss by {-largest.gap:.3g}, more than "
               f"the noise {largest.noise:.3g}: the search missed a better config")
        return verdict(INCONCLUSIVE, why, None, largest)
    why = (f"at scale {worst.scale} the carried optimum costs {worst.gap:.3g}: above the noise {worst.noise:.3g}, "
           f"within z x sqrt(2) x noise = {required:.3g}")
    return verdict(INCONCLUSIVE, why, None, worst)
