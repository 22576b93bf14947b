"""Where runs train: a pool of warm worker processes on this machine, or Ray actors across a cluster.

    preflight    a device check before any run
    pool         the local pool: one warm worker per device, retries, retired workers, the watchdog
    ray_cluster  the same contract on Ray actors, one per GPU of the cluster
    tracker      an executor that also logs every run to Weights & Biases
    backends     the executor a study's settings ask for
"""

from .backends import make_executor
from .pool import Executor, Outcome, Task

__all__ = ["Executor", "Outcome", "Task", "make_executor"]
