"""Optional experiment tracking (`study.tracker: wandb`): every finished run logged to Weights & Biases.

One W&B run per trained run, named by its run-store key and grouped by scale, with the hyperparameters, the
scale and the seed as its config, the train and held-out loss curves, and the final loss, status and
throughput in its summary. Logging happens on the driver as outcomes arrive, so it works the same with
either executor. W&B's own settings apply: `WANDB_MODE=offline` logs to `WANDB_DIR` without a network.
"""

from __future__ import annotations

from typing import Any, Iterator

from .protocol import Backend
from .tasks import Outcome, Task, TaskInbox


class WandbTracker:
    def __init__(self, project: str):
        import wandb

        self.wandb, self.project = wandb, project

    def log(self, outcome: Outcome) -> None:
        spec, result = outcome.spec, outcome.result or {}
        run = self.wandb.init(
            project=self.project, name=outcome.key, group=spec["scale"].get("name"), job_type="run",
            config={"hparams": spec["hparams"], "scale": spec["scale"], "seed": spec["seed"], "key": outcome.key},
        )
        points: dict[int, dict[str, float]] = {}
        for curve, metric in (("train_curve", "train/loss"), ("eval_curve", "eval/loss")):
            for step, loss in result.get(curve) or []:
                points.setdefault(int(step), {})[metric] = loss
        for step in sorted(points):
            run.log(points[step], step=step)
        run.summary.update({
            "loss": result.get("loss"), "status": "failed" if outcome.error else result.get("status", "ok"),
            "tokens_per_s": result.get("tokens_per_s"), "attempts": outcome.attempts, "wall_s": outcome.wall_s,
        })
        run.finish(exit_code=1 if outcome.error else 0)


class TrackedExecutor:
    """An executor whose outcomes are also logged by a tracker as they pass through to the run store; a
    `Backend` itself."""

    def __init__(self, executor: Backend, tracker: WandbTracker):
        self.executor, self.tracker = executor, tracker

    def __enter__(self) -> TrackedExecutor:
        self.executor.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.executor.__exit__(*exc_info)

    @property
    def inline(self) -> bool:
        return self.executor.inline

    def start(self) -> None:
        self.executor.start()

    def run(self, tasks: list[Task]) -> Iterator[Outcome]:
        yield from self._logged(self.executor.run(tasks))

    def serve(self, inbox: TaskInbox) -> Iterator[Outcome]:
        yield from self._logged(self.executor.serve(inbox))

    def _logged(self, outcomes: Iterator[Outcome]) -> Iterator[Outcome]:
        for outcome in outcomes:
            yield outcome  # stored first: a tracking hiccup must never cost a finished run
            self.tracker.log(outcome)
