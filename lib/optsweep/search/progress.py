"""A sweep's progress: runs done / planned and the best loss, on a terminal bar or as log lines."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from tqdm import tqdm

if TYPE_CHECKING:
    from .evaluator import EvaluatedRun


class Progress:
    """Runs done / planned and the best loss: a tqdm bar on a terminal, plain log lines otherwise (and when
    several searches report at once)."""

    def __init__(self, label: str, enabled: bool, lines_only: bool = False):
        on_terminal = enabled and sys.stderr.isatty() and not lines_only
        self.label, self.lines = label, enabled and not on_terminal
        self.bar = tqdm(total=0, unit="run", desc=label, file=sys.stderr, dynamic_ncols=True) if on_terminal else None
        self.planned = self.done = 0

    def plan(self, to_train: int, reused: int, best: float | None) -> None:
        """Announce a batch: `to_train` runs go to the executor, `reused` came from the run store."""
        self.planned += to_train + reused
        self.done += reused
        if self.bar is not None:
            self.bar.total = self.planned
            self.bar.update(reused)
            self.bar.set_postfix_str(f"best {_loss_text(best)}")
        elif self.lines and reused:
            print(f"{self.label}: {self.done}/{self.planned} ({reused} from the run store); best {_loss_text(best)}",
                  file=sys.stderr, flush=True)

    def trained(self, run: EvaluatedRun, best: float | None) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"best {_loss_text(best)}")
        elif self.lines:
            values = " ".join(f"{h}={v:g}" for h, v in run.hparams.items())
            print(f"{self.label}: {self.done}/{self.planned} {run.status} loss {_loss_text(run.loss)} "
                  f"[{values}] seed {run.seed}; best {_loss_text(best)}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _loss_text(loss: float | None) -> str:
    return "-" if loss is None else f"{loss:.4f}"
