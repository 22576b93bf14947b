"""When a run counts as diverged: one rule, used by the trainer on a run's curve and by the analysis on tables.

Runs that blow up do not always reach NaN: at real scale they settle at a finite loss far above where good
runs sit (7-8 nats against ~3), so a threshold on the absolute loss alone lets them train their whole
budget and then bend every optimum fit. The rule here says a loss has *blown up* when it is more than
`rise` (relative) above a reference that the same setting is known to reach:

- during a run (`DivergenceMonitor`), the reference is the run's own best smoothed train loss so far; once
  warmup is over, a smoothed loss above `(1 + rise) x best` for `patience` consecutive steps stops the run.
  A non-finite loss, or one above the absolute `threshold`, stops it at once.
- on a table of finished runs (`blown_up`), the reference is the best finished loss at the same scale: a
  final loss above `(1 + rise) x best` marks the row diverged, so a blown-up run with a finite loss never
  enters an optimum fit, whichever codebase produced the table.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Iterable

import numpy as np

DEFAULT_RISE = 0.5  # good runs of a sweep sit within ~20% of the best; blown-up ones at 2x or more


class DivergenceCause(str, enum.Enum):
    """Which part of the rule fired."""

    NON_FINITE = "non-finite loss"
    ABOVE_THRESHOLD = "loss above the absolute threshold"
    RISE = "smoothed loss rose above its best by more than the allowed rise"


@dataclasses.dataclass(frozen=True)
class Divergence:
    step: int  # 0-based index of the train step at which the rule fired
    cause: DivergenceCause
    loss: float  # the (raw) train loss at that step

    def describe(self) -> str:
        return f"{self.cause.value} at step {self.step} (loss {self.loss:.4g})"


def blown_up(losses: np.ndarray | Iterable[float], reference: float, rise: float = DEFAULT_RISE) -> np.ndarray:
    """Boolean mask: finite losses more than `rise` (relative) above `reference` (the best at their scale)."""
    values = np.asarray(list(losses) if not isinstance(losses, np.ndarray) else losses, dtype=float)
    if not math.isfinite(reference):
        return np.zeros(values.shape, dtype=bool)
    return np.isfinite(values) & (values > (1.0 + rise) * reference)


class DivergenceMonitor:
    """Watches a run's train losses step by step; `observe` returns the first divergence, else None.

    Its state is a pure function of the losses seen, so a resumed run rebuilds it by observing the saved
    train curve again.
    """

    def __init__(self, warmup: int, threshold: float, rise: float = DEFAULT_RISE, patience: int = 10,
                 smoothing: float = 0.1):
        self.warmup, self.threshold, self.rise = warmup, threshold, rise
        self.patience, self.smoothing = patience, smoothing
        self.step = 0
        self.smoothed: float | None = None
        self.best = math.inf
        self.streak = 0

    def observe(self, losses: Iterable[float]) -> Divergence | None:
        """Feed the next train losses in order; the first divergence among them, or None."""
        for loss in losses:
            found = self._observe_one(float(loss))
            self.step += 1
            if found is not None:
                return found
        return None

    def _observe_one(self, loss: float) -> Divergence | None:
        if not math.isfinite(loss):
            return Divergence(self.step, DivergenceCause.NON_FINITE, loss)
        self.smoothed = loss if self.smoothed is None else self.smoothed + self.smoothing * (loss - self.smoothed)
        self.best = min(self.best, self.smoothed)
        if self.step < self.warmup:
            return None
        if loss > self.threshold:
            return Divergence(self.step, DivergenceCause.ABOVE_THRESHOLD, loss)
        self.streak = self.streak + 1 if self.smoothed > (1.0 + self.rise) * self.best else 0
        if self.streak >= self.patience:
            return Divergence(self.step, DivergenceCause.RISE, loss)
        return None
