"""The Ray backend of the executor (`study.executor: ray`): runs trained by long-lived actors across a cluster.

Same contract as the local pool (optsweep.execution.pool.Executor): `run(tasks)` yields each outcome once final,
a crashed run is retried once on another actor, an actor that dies (killed, out of memory) is replaced and
its run retried, an actor the retire rule condemns (a device error, a failed device check, fast failures in
a row) is replaced by one that runs the preflight again, the watchdog kills the actor of a run that makes
no progress for `study.train.stall_timeout_s` (the run is retried from its checkpoint; a second stall fails
it), and Ctrl-C hands over the runs that had finished before stopping. An actor whose node is lost, or
whose replacement cannot start, is dropped with one line saying which and why; the sweep goes on with the
others, and stops only when none is left. Only the driver writes the run store: actors return outcomes, the
search stores them.

Where the cluster comes from (`study.ray.address`):
- `local`: a private cluster started in this process for this sweep, with `study.workers` x
  `study.train.threads_per_worker` CPUs (and every GPU of the machine); it stops with the sweep.
- `auto`: the cluster this machine already belongs to (`ray start` was run here).
- `host:port`: the head of a running cluster (the GCS port that `ray start --head --port` opened).

How many actors, of what shape (the cluster's size decides, not `study.workers`):
- GPUs in the cluster (and `study.train.device` not `cpu`): `workers_per_gpu` actors per GPU, each with
  1/workers_per_gpu of a GPU (Ray sets CUDA_VISIBLE_DEVICES) and `threads_per_worker` CPUs.
- CPU only: as many actors of `threads_per_worker` CPUs as the nodes hold.
Each actor imports the trainer once and runs the preflight (optsweep.execution.preflight: its device, and the prepared
data at the driver's absolute path) before its first run; a failure stops the sweep with one line before any
run is dispatched. Every node must see the same code and Python environment (the same venv and PYTHONPATH
when `ray start` runs) and the prepared data and run store at the same absolute paths. Nothing depends on the
folder `ray start` ran in: run specs carry absolute paths, and each actor gets its thread limits and the CUDA
allocator settings through its runtime environment, not from the environment of `ray start`.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import socket
import sys
import time
from typing import Any, Iterable, Iterator

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from ..live import RunProgress, progress_line, reporting_to
from ..params.settings import ParamsError
from ..params.study import StudySettings, TrainSettings
from ..runs.trainer import Trainer, load_trainer
from .pool import Executor
from .preflight import PreflightError, preflight
from .rules import ATTEMPTS, FailureStreak, say_dropped, say_retired, settle
from .tasks import INBOX_POLL_S, Attempt, Outcome, Task, TaskInbox, WaitingTasks
from .workers import CUDA_ALLOCATOR, data_dir_read_by, limit_torch_threads, thread_limits, train_once, visible_gpus

LOCAL_OBJECT_STORE_BYTES = 100 * 2**20  # outcomes are small dicts; Ray's default takes 30% of the RAM
READY_TIMEOUT_S = 300.0  # actors that are not placed by then wait for resources held elsewhere, or lost
PLACEMENT_POLL_S = 1.0  # how often a replacement that is not placed yet looks whether its node was lost
CONNECT_TIMEOUT_S = 10.0  # ray.init retries an unreachable head for minutes; a socket says so at once


# --- the cluster: connecting, and the actors it holds ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ActorShape:
    count: int
    num_cpus: float
    num_gpus: float


def plan_actors(train: TrainSettings, workers_per_gpu: int, nodes: list[dict[str, float]]) -> ActorShape:
    """The actors for a cluster whose alive nodes hold `nodes` resources (Ray's "CPU" and "GPU" counts)."""
    threads = train.threads_per_worker
    gpus = sum(int(node.get("GPU", 0)) for node in nodes)
    if train.device == "cuda" and not gpus:
        raise ParamsError(f"study.train.device: 'cuda' but the Ray cluster's {len(nodes)} node(s) have no GPU")
    if gpus and train.device != "cpu":
        for node in nodes:
            actors = int(node.get("GPU", 0)) * workers_per_gpu
            if actors * threads > node.get("CPU", 0):
                raise ParamsError(
                    f"study.workers_per_gpu: {workers_per_gpu} workers per GPU x {threads} threads_per_worker need "
                    f"{actors * threads} CPUs on a node with {int(node['GPU'])} GPU(s) and {node.get('CPU', 0):g} "
                    "CPUs; lower study.workers_per_gpu or study.train.threads_per_worker"
                )
        return ActorShape(gpus * workers_per_gpu, threads, 1 / workers_per_gpu)
    count = sum(int(node.get("CPU", 0) // threads) for node in nodes)
    if count == 0:
        largest = max((node.get("CPU", 0) for node in nodes), default=0)
        raise ParamsError(f"study.train.threads_per_worker: {threads} CPUs per worker fit on no node of the "
                          f"Ray cluster (the largest has {largest:g} CPUs)")
    return ActorShape(count, threads, 0)


def _check_reachable(address: str) -> None:
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise ParamsError(f"study.ray.address: no Ray head answers at {address} ({error.strerror or error}); "
                          "start one with `ray start --head` or use 'local'") from None


@dataclasses.dataclass(frozen=True)
class Connection:
    owned: bool  # this process joined or started the cluster, so it must shut the connection down
    dashboard_url: str | None


def connect(study: StudySettings) -> Connection:
    """Join (or start) the cluster `study.ray.address` names."""
    if ray.is_initialized():  # a notebook or script that set up Ray itself
        return Connection(False, None)
    address = study.ray.address
    if address == "local":
        cpu_only = study.train.device == "cpu" or not visible_gpus()
        context = ray.init(num_cpus=study.workers * study.train.threads_per_worker if cpu_only else None,
                           object_store_memory=LOCAL_OBJECT_STORE_BYTES, include_dashboard=study.ray.dashboard)
        return Connection(True, context.dashboard_url)
    if address != "auto":
        _check_reachable(address)
    try:
        context = ray.init(address=address)
    except (ConnectionError, RuntimeError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ParamsError(f"study.ray.address: cannot join the Ray cluster at {address!r} ({first})") from None
    return Connection(True, context.dashboard_url)


def alive_nodes() -> list[dict[str, float]]:
    return [node["Resources"] for node in ray.nodes() if node["Alive"]]


def lost_nodes(node_ids: set[str]) -> list[str]:
    """Which of these nodes the cluster has lost, as `ip (id)`."""
    return [f"{node['NodeManagerAddress']} ({node['NodeID'][:6]})" for node in ray.nodes()
            if node["NodeID"] in node_ids and not node["Alive"]]


class NodeLost(RuntimeError):
    """A slot's node is gone, so its replacement has no place to start; the message says which node."""


# --- one actor: a long-lived worker on one device -----------------------------------------------------------


class TrainerActor:
    """Imports the trainer once, proves its device and data, then trains one run at a time and reports its
    progress. Its thread limits come with its runtime environment (see `RayExecutor._new_actor`)."""

    def __init__(self, trainer_name: str, train_settings: dict[str, Any], data_dir: str | None):
        self.trainer_name, self.train_settings, self.data_dir = trainer_name, train_settings, data_dir
        self.trainer: Trainer | None = None
        self.latest: RunProgress | None = None

    def start(self) -> tuple[str, str, str]:
        """("ready", where this actor runs, its node id), or ("params" | "preflight", the one-line error, id)."""
        context = ray.get_runtime_context()
        try:
            self.trainer = load_trainer(self.trainer_name)
            limit_torch_threads(self.train_settings["threads_per_worker"])
            device = preflight(self.train_settings, self.data_dir)
        except ParamsError as error:
            return "params", str(error), context.get_node_id()
        except PreflightError as error:
            return "preflight", f"{error} (on node {ray.util.get_node_ip_address()})", context.get_node_id()
        gpus = context.get_accelerator_ids().get("GPU") or []
        where = f"GPU {','.join(gpus)}" if gpus else device
        place = f"{ray.util.get_node_ip_address()} node {context.get_node_id()[:6]} {where} (pid {os.getpid()})"
        return "ready", place, context.get_node_id()

    def train(self, spec: dict[str, Any]) -> Attempt:
        self.latest = None
        try:
            with reporting_to(self._note):
                return train_once(self.trainer, spec, self.train_settings)
        finally:
            self.latest = None  # between runs there is no progress: the next run's watchdog starts afresh

    def _note(self, progress: RunProgress) -> None:
        self.latest = progress

    def progress(self) -> RunProgress | None:
        return self.latest


# Two concurrent calls: `progress` answers while `train` runs. No restarts: a dead actor's run is retried
# by the driver, on a fresh actor, under the same attempt count as the local pool.
RemoteTrainerActor = ray.remote(max_concurrency=2, max_restarts=0)(TrainerActor)


@dataclasses.dataclass
class _Slot:
    number: int  # kept by its replacements: a retry avoids the slot it failed on
    actor: Any  # a Ray actor handle
    streak: FailureStreak
    place: str = ""
    node: str = ""  # the id of the node the actor runs on
    task: Task | None = None
    attempt: int = 0
    started: float = 0.0
    heard: float = 0.0  # when the driver last saw its run progress (time.monotonic): the watchdog's clock
    seen: RunProgress | None = None  # the run's latest report the driver saw
    stalled: bool = False  # killed by the watchdog

    def dispatch(self, chosen: tuple[Task, int]) -> None:
        """Take a task; its start counts as progress."""
        (self.task, self.attempt), self.seen, self.stalled = chosen, None, False
        self.started, self.heard = time.perf_counter(), time.monotonic()

    @property
    def name(self) -> str:
        return f"Ray worker {self.number} on {self.place}"


# --- the pool ---------------------------------------------------------------------------------------------


class RayExecutor(Executor):
    """Trains tasks on Ray actors. Ctrl-C handling is the local pool's (inherited); the rest is Ray's."""

    def __init__(self, study: StudySettings):
        super().__init__(study.trainer, environments=[], train=study.train)
        self.inline = False  # actors, never the driver itself
        self.study = study
        self._slots: list[_Slot] = []
        self._shape: ActorShape | None = None
        self._owns_connection = False
        self._last_progress = 0.0

    def start(self) -> None:
        """Connect and start the actors (each runs the device preflight), once."""
        if not self._slots:
            self._start_pool()

    def run(self, tasks: list[Task]) -> Iterator[Outcome]:
        """Train every task; yields each outcome once final. Connects and starts the actors with the first task."""
        if tasks:
            yield from self._run(tasks, None)

    def serve(self, inbox: TaskInbox) -> Iterator[Outcome]:
        """Train whatever other threads submit to `inbox` until it is finished (the searches of a phase)."""
        yield from self._run([], inbox)

    def _run(self, tasks: list[Task], inbox: TaskInbox | None) -> Iterator[Outcome]:
        self.start()
        waiting = WaitingTasks(len(self._slots), tasks)  # one wave of runs: see WaitingTasks
        running: dict[Any, _Slot] = {}  # object ref of a train() call -> its actor
        while True:
            if inbox is not None:
                waiting.take_from(inbox)
            if not waiting and not running and (inbox is None or inbox.finished()):
                return
            for slot in self._slots:
                if slot.task is None and (chosen := waiting.pop(slot.number if len(self._slots) > 1 else None)):
                    slot.dispatch(chosen)
                    running[slot.actor.train.remote(slot.task.spec)] = slot
            stall = self._until_stall(running.values())
            timeout = min(self._until_progress(), INBOX_POLL_S if inbox is not None else math.inf,
                          math.inf if stall is None else stall)
            try:
                with self._interruptible_section():
                    if running:
                        done, _ = ray.wait(list(running), num_returns=1, timeout=timeout)
                    else:
                        done = []
                        inbox.wait(timeout)
            except KeyboardInterrupt:
                yield from self._finished_before_interrupt(running)
                raise
            if running and self._until_progress() == 0:
                self._print_progress(running.values())
            if self._until_stall(running.values()) == 0:
                self._kill_stalled([slot for slot in running.values() if not slot.stalled])
            for ref in done:
                outcome = self._collect(ref, running.pop(ref), waiting)
                if outcome is not None:
                    yield outcome

    def close(self, graceful: bool = True) -> None:
        for slot in self._slots:
            ray.kill(slot.actor, no_restart=True)
        self._slots = []
        if self._owns_connection:
            ray.shutdown()
            self._owns_connection = False

    # starting and replacing actors

    def _start_pool(self) -> None:
        connection = connect(self.study)
        self._owns_connection = connection.owned
        self._shape = plan_actors(self.study.train, self.study.workers_per_gpu, alive_nodes())
        self._slots = [_Slot(number, self._new_actor(), FailureStreak(self.retire_after))
                       for number in range(self._shape.count)]  # they start concurrently
        self._await_started(self._slots)
        self._last_progress = time.perf_counter()
        devices = collections.Counter(slot.place.rsplit(" (pid", 1)[0] for slot in self._slots)
        print(f"ray: {len(self._slots)} workers ({', '.join(f'{n} on {d}' for d, n in devices.items())}); "
              f"Ray dashboard: {connection.dashboard_url or 'none'}", file=sys.stderr, flush=True)

    def _new_actor(self) -> Any:
        # Set as the actor's process starts, before torch is imported: a node's `ray start` environment has none.
        env = {**thread_limits(self.study.train.threads_per_worker), **CUDA_ALLOCATOR}
        return RemoteTrainerActor.options(num_cpus=self._shape.num_cpus, num_gpus=self._shape.num_gpus,
                                          runtime_env={"env_vars": env}).remote(
            self.trainer_name, self.study.train.model_dump(mode="json"), data_dir_read_by(self.study))

    def _await_started(self, slots: list[_Slot]) -> None:
        """Wait for the actors to import the trainer and pass the preflight; a failure there stops the sweep.
        An actor that dies while starting (its worker process or node lost) is replaced, once."""
        starts = [slot.actor.start.remote() for slot in slots]  # they start concurrently
        for slot, start in zip(slots, starts):
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    status, detail, node = self._start_answer(slot, start, len(slots))
                    break
                except RayActorError as error:
                    if attempt == ATTEMPTS:
                        raise RuntimeError(f"Ray workers died before they were ready ({str(error).splitlines()[0]})"
                                           ) from None
                    slot.actor = self._new_actor()
                    start = slot.actor.start.remote()
            if status == "params":
                raise ParamsError(f"{detail} (in a Ray worker)")
            if status == "preflight":
                raise PreflightError(detail)
            slot.place, slot.node = detail, node

    def _start_answer(self, slot: _Slot, start: Any, starting: int) -> tuple[str, str, str]:
        """The actor's answer to start(). A replacement stops waiting once the node its slot had is known lost:
        the cluster was sized to its nodes, so the lost node's share has nowhere else to go."""
        deadline = time.perf_counter() + READY_TIMEOUT_S
        while True:
            try:
                return ray.get(start, timeout=PLACEMENT_POLL_S)
            except GetTimeoutError:
                lost = lost_nodes({slot.node}) if slot.node else []  # no node yet at the start of the sweep
                if lost:
                    raise NodeLost(f"its node {lost[0]} was lost") from None
                if time.perf_counter() > deadline:
                    lost = lost_nodes({other.node for other in self._slots})
                    why = f"node(s) {', '.join(lost)} lost" if lost else "other jobs hold its resources"
                    raise ParamsError(f"study.ray.address: the cluster did not place {starting} worker(s) "
                                      f"within {READY_TIMEOUT_S:.0f} s; {why}") from None

    def _replace(self, slot: _Slot) -> None:
        """A fresh actor in the slot, preflighted again; a slot whose node is lost, or whose replacement cannot
        start, is dropped."""
        ray.kill(slot.actor, no_restart=True)  # retired, or alive but unreachable: it must not train on unseen
        slot.actor, slot.streak = self._new_actor(), FailureStreak(self.retire_after)
        try:
            self._await_started([slot])
        except NodeLost as lost:
            self._drop(slot, str(lost))
        except (ParamsError, PreflightError, RuntimeError) as error:
            self._drop(slot, f"its replacement cannot start: {error}")

    def _drop(self, slot: _Slot, reason: str) -> None:
        """Give the slot up (its name still says where its last actor ran: a replacement that did not start
        never set it)."""
        ray.kill(slot.actor, no_restart=True)
        self._slots.remove(slot)
        say_dropped(slot.name, reason, len(self._slots), self._shape.count)

    # collecting outcomes

    def _collect(self, ref: Any, slot: _Slot, waiting: WaitingTasks) -> Outcome | None:
        """The outcome if its task is final; a failed attempt with tries left waits to be retried. An actor
        that died is replaced (or dropped, with its node), and one the retire rule condemns too."""
        task, number = slot.task, slot.attempt
        slot.task = None
        try:
            attempt = ray.get(ref)
            retire = slot.streak.retire_reason(attempt)
            if retire is not None:
                say_retired(slot.name, retire)
                self._replace(slot)
        except RayActorError as died:
            wall = time.perf_counter() - slot.started
            error = (self.watchdog.reason(slot.name) if slot.stalled
                     else f"{slot.name} died while training this run ({str(died).splitlines()[0]})")
            attempt = Attempt(None, error, wall)
            self._replace(slot)
        return settle(task, number, attempt, waiting, slot.number)

    @staticmethod
    def _finished_before_interrupt(running: dict[Any, _Slot]) -> Iterator[Outcome]:
        """Runs that finished as Ctrl-C came in: hand them over (to be stored) before the actors stop."""
        if not running:
            return
        done, _ = ray.wait(list(running), num_returns=len(running), timeout=0.2)
        for ref in done:
            slot = running[ref]
            try:
                attempt = ray.get(ref)
            except RayActorError:
                continue
            if attempt.error is None:
                yield Outcome(slot.task.key, slot.task.spec, attempt.result, None, slot.attempt, attempt.wall_s)

    # progress: lines, and the watchdog

    def _reports(self, busy: list[_Slot]) -> list[RunProgress | None]:
        """Each busy actor's latest report (None: none yet, or the actor did not answer in time); a new one
        resets its run's watchdog clock. An actor too stuck to answer counts as making no progress."""
        asked = [slot.actor.progress.remote() for slot in busy]
        answered, _ = ray.wait(asked, num_returns=len(asked), timeout=CONNECT_TIMEOUT_S)
        reports = []
        for slot, ref in zip(busy, asked):
            try:
                report = ray.get(ref) if ref in answered else None
            except RayActorError:
                report = None  # a dying actor shows up as a failed run, not here
            if report is not None and report != slot.seen:
                slot.seen, slot.heard = report, time.monotonic()
            reports.append(report)
        return reports

    def _until_stall(self, busy: Iterable[_Slot]) -> float | None:
        """Seconds until a run in flight may have stalled (None: none can); runs already killed are not watched."""
        return self.watchdog.until_stall([slot.heard for slot in busy if not slot.stalled])

    def _kill_stalled(self, busy: list[_Slot]) -> None:
        """The watchdog: kill the actor of a run without progress for `stall_timeout_s`; its train() call then
        fails, and `_collect` replaces the actor and retries the run from its checkpoint."""
        self._reports(busy)  # the latest reports first: a run may have progressed since the driver last looked
        for slot in busy:
            silent = self.watchdog.stalled_for(slot.heard)
            if silent is not None:
                self.watchdog.say_killed(slot.task.key, slot.name, silent, slot.attempt)
                slot.stalled = True
                ray.kill(slot.actor, no_restart=True)

    def _until_progress(self) -> float:
        return max(0.0, self._last_progress + self.study.ray.progress_every_s - time.perf_counter())

    def _print_progress(self, busy: Any) -> None:
        self._last_progress = time.perf_counter()
        busy = list(busy)
        for slot, report in zip(busy, self._reports(busy)):
            print(progress_line(slot.task.key, slot.place, report), file=sys.stderr, flush=True)
