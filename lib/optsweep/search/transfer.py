"""Does an optimum transfer between optimizers? Another optimizer's best, carried to this one's sweep."""

from __future__ import annotations

import dataclasses

from ..params.settings import ParamsError
from ..results.documents import SweepResult, TransferredOptimum, read_document
from ..runs.store import RunStatus
from .history import EvaluatedRun, Evaluations
from .space import Config
from .sweep_plan import SweepPlan


@dataclasses.dataclass
class CarriedOptimum:
    """Another optimizer's best at this scale, carried to this optimizer's hyperparameters."""

    source: str  # the optimizer it came from
    carried: list[str]  # the hyperparameter names taken from it
    hparams: Config  # the rest at this sweep's best (when it was carried)


def carried_optimum(plan: SweepPlan, best: EvaluatedRun) -> CarriedOptimum | None:
    """Another optimizer's best at this scale (`plan.carry_from`, AdamW's), carried to this one where the
    hyperparameter names match and the rest kept at this sweep's best: does an optimum transfer between
    optimizers? None without a source result, a finished best, or a carried value in this optimizer's domain."""
    path = plan.carry_from
    if path is None or not path.is_file() or best.status != RunStatus.OK:
        return None
    source = read_document(path, SweepResult)
    carried = [h for h in best.hparams if h in source.best]
    hparams = {**best.hparams, **{h: source.best[h] for h in carried}}
    try:
        plan.check(hparams, key=f"{path}: best")
    except ParamsError:
        return None
    return CarriedOptimum(source.optimizer, carried, hparams)


def transfer_report(carried: CarriedOptimum | None, best: EvaluatedRun,
                    runs: Evaluations) -> TransferredOptimum | None:
    if carried is None:
        return None
    run = runs.evaluate([carried.hparams])[0]  # trained during the search: read back from its memory
    return TransferredOptimum(source=carried.source, carried=carried.carried, hparams=carried.hparams,
                              loss=run.loss, status=run.status, tuned_loss=best.loss)
