"""Where runs train: a pool of warm worker processes on this machine, or Ray actors across a cluster.

    preflight    a device check before any run
    tasks        what executors exchange: tasks, attempts, outcomes, the inbox, the tasks waiting
    workers      the worker processes: devices, environments, one attempt at a time
    rules        retries, retired workers, the watchdog: written once, applied by both executors
    pool         the local pool: one warm worker per device
    ray_cluster  the same contract on Ray actors, one per GPU of the cluster
    tracker      an executor that also logs every run to Weights & Biases
    backends     the executor a study's settings ask for
"""

from .backends import make_executor
from .pool import Executor
from .tasks import Outcome, Task

__all__ = ["Executor", "Outcome", "Task", "make_executor"]
