"""The executor a study asks for: the local process pool or Ray actors (`study.executor`), optionally tracked.

Ray is imported only when `study.executor` is `ray`, and wandb only when `study.tracker` is `wandb`.
"""

from __future__ import annotations

from ..params.study import StudySettings
from .pool import Executor
from .protocol import Backend
from .tracker import TrackedExecutor
from .workers import data_dir_read_by, worker_environments


def make_executor(study: StudySettings) -> Backend:
    """The pool the study asks for (see `Backend`). Checks what it can before any import."""
    if study.executor == "ray":
        from .ray_cluster import RayExecutor

        executor: Backend = RayExecutor(study)
    else:
        executor = Executor(study.trainer, worker_environments(study), train=study.train,
                            data_dir=data_dir_read_by(study))
    if study.tracker == "wandb":
        from .tracker import WandbTracker

        return TrackedExecutor(executor, WandbTracker(study.name))
    return executor
