"""The Ray backend of the executor (`study.executor: ray`): runs trained by long-lived actors across a cluster.

The same loop as the local pool (optsweep.execution.loop): `run(tasks)` yields each outcome once final,
a crashed run is retried once on another actor, an actor that dies (killed, out of memory) is replaced and
its run retried, an actor the retire rule condemns (a device error, a failed device check, fast failures in
a row) is replaced by one that runs the preflight again, the watchdog kills the actor of a run that makes
no progress for `study.train.stall_timeout_s` (the run is retried from its checkpoint; a second stall fails
it), and Ctrl-C hands over the runs that had finished before stopping. An actor whose node is lost, or
whose replacement cannot start, is dropped with one line saying which and why; the sweep goes on with the
others, and stops only when none is left. Only the driver writes the run store: actors return outcomes, the
search stores them. Every `study.ray.progress_every_s` the driver prints a line per run in flight (its node,
device, step, loss, throughput and ETA), from the report its actor last received.

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
import os
import socket
import sys
import time
from typing import Any, Iterator

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from ..live import RunProgress, progress_line, reporting_to
from ..params.settings import ParamsError
from ..params.study import StudySettings, TrainSettings
from ..runs.trainer import Trainer, load_trainer
from .loop import Slot, SlotPool
from .preflight import PreflightError, preflight
from .rules import ATTEMPTS, FailureStreak
from .tasks import Attempt
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


@dataclasses.dataclass(kw_only=True)
class _Slot(Slot):
    """A slot's actor, where it runs, and the driver's view of its run's progress."""

    actor: Any  # a Ray actor handle
    place: str = ""  # set once the actor has started
    node: str = ""  # the id of the node the actor runs on
    ref: Any = None  # the object ref of its train() call in flight
    heard: float = 0.0  # when the driver last saw its run progress (time.monotonic): the watchdog's clock
    seen: RunProgress | None = None  # the run's latest report the driver saw

    @property
    def name(self) -> str:
        return f"Ray worker {self.number} on {self.place}"


# --- the pool ---------------------------------------------------------------------------------------------


class RayExecutor(SlotPool[_Slot]):
    """Trains tasks on Ray actors; the loop (and Ctrl-C) is `SlotPool`'s, the actors and the cluster are Ray's."""

    def __init__(self, study: StudySettings):
        super().__init__(study.train)
        self.trainer_name = study.trainer
        self.study = study
        self._shape: ActorShape | None = None
        self._owns_connection = False
        self._last_progress = 0.0

    def close(self, graceful: bool = True) -> None:
        for slot in self._slots:
            ray.kill(slot.actor, no_restart=True)
        self._slots = []
        if self._owns_connection:
            ray.shutdown()
            self._owns_connection = False

    # starting and replacing actors

    def _start_slots(self) -> None:
        connection = connect(self.study)
        self._owns_connection = connection.owned
        self._shape = plan_actors(self.study.train, self.study.workers_per_gpu, alive_nodes())
        self._slots = [_Slot(number, FailureStreak(self.retire_after), actor=self._new_actor())
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

    def _restart(self, slot: _Slot) -> str | None:
        """A fresh actor in the slot, preflighted again; a slot whose node is lost, or whose replacement cannot
        start, is given up (its name still says where its last actor ran: a start that failed never set it)."""
        slot.actor = self._new_actor()
        try:
            self._await_started([slot])
        except NodeLost as lost:
            reason = str(lost)
        except (ParamsError, PreflightError, RuntimeError) as error:
            reason = f"its replacement cannot start: {error}"
        else:
            return None
        ray.kill(slot.actor, no_restart=True)
        return reason

    def _stop(self, slot: _Slot) -> None:
        ray.kill(slot.actor, no_restart=True)  # retired, or alive but unreachable: it must not train on unseen

    _kill = _stop  # Ray ends an actor at once either way

    # runs: handing over, waiting, reading

    def _send(self, slot: _Slot) -> None:
        slot.seen, slot.heard = None, time.monotonic()
        slot.ref = slot.actor.train.remote(slot.task.spec)

    def _wait(self, busy: list[_Slot], timeout: float | None) -> list[_Slot]:
        refs = {slot.ref: slot for slot in busy}
        done, _ = ray.wait(list(refs), num_returns=1, timeout=timeout)
        return [refs[ref] for ref in done]

    def _read(self, slot: _Slot) -> Attempt | str:
        try:
            return ray.get(slot.ref)
        except RayActorError as died:
            return f"{slot.name} died while training this run ({str(died).splitlines()[0]})"

    def _answered(self, slot: _Slot) -> bool:
        done, _ = ray.wait([slot.ref], timeout=0)
        return bool(done)

    def _answers_at_interrupt(self, busy: list[_Slot]) -> Iterator[tuple[_Slot, Attempt]]:
        if not busy:
            return
        refs = {slot.ref: slot for slot in busy}
        done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0.2)
        for ref in done:
            try:
                attempt = ray.get(ref)
            except RayActorError:
                continue
            yield refs[ref], attempt

    # progress: lines, and the watchdog's clock

    def _heartbeat(self, slot: _Slot) -> float:
        return slot.heard

    def _hear_from(self, watched: list[_Slot]) -> None:
        self._reports(watched)

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

    def _report_progress(self, busy: list[_Slot]) -> float:
        """A line per run in flight every `study.ray.progress_every_s`; seconds until the next lines are due."""
        every = self.study.ray.progress_every_s
        due = self._last_progress + every - time.perf_counter()
        if due > 0:
            return due
        self._last_progress = time.perf_counter()  # with nothing in flight too: an idle pool waits, not spins
        for slot, report in zip(busy, self._reports(busy) if busy else []):
            print(progress_line(slot.task.key, slot.place, report), file=sys.stderr, flush=True)
        return every
