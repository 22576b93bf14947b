"""Where runs train: a pool of warm worker processes on this machine, or Ray actors across a cluster.

    preflight    a device check before any run
    tasks        what executors exchange: tasks, attempts, outcomes, the inbox, the tasks waiting
    protocol     what the search relies on from an executor: `Runner` (start, run) and `Backend` (a pool)
    workers      the worker processes: devices, environments, one attempt at a time
    rules        retries, retired workers, the watchdog: written once, applied by both executors
    loop         the dispatch/wait/collect loop both executors run, over slots of warm workers
    pool         the local pool: one warm worker process per device (or inline with one worker)
    ray_cluster  the same loop on Ray actors, one per GPU of the cluster
    tracker      an executor that also logs every run to Weights & Biases
    backends     the executor a study's settings ask for
"""

from .backends import make_executor
from .pool import Executor
from .protocol import Backend, Runner
from .tasks import Outcome, Task

__all__ = ["Backend", "Executor", "Outcome", "Runner", "Task", "make_executor"]
