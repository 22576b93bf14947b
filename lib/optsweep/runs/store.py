"""The run store: every finished run as one JSON file, so that no run is ever trained twice.

A run's key is a hash of what decides its result: the run spec (scale, hyperparameters, seed, data
identity, train settings, and the optimizer's name, libraries and code), the trainer's name and the identity
of the trainer's code. Code counts by what it computes alone (optsweep.codehash): comments, docstrings,
layout, import lines and the modules' paths do not, and one optimizer's code is in its runs' keys only
(`optimizers.optimizer_identity`, `runs.trainer.code_identity`). What cannot change the result
is left out of the key (the scale's name, where the prepared data lives, threads, micro-batches, the
checkpoint interval and folder), so that renaming a scale, moving the data or changing the thread count
reuses every stored run.

What the store guarantees:
- A record is final: an `ok` or `diverged` run is never trained again. A `failed` run (the trainer raised,
  or its worker died twice) is kept for its error text but is *not* a result: the next sweep trains it
  again, resuming from its checkpoint.
- A run in progress may keep one checkpoint in `checkpoints/<key>/` (written by the trainer, atomically);
  it is deleted once the run's record is stored.
- Several drivers (two boxes, two scales started by hand) may share one store and never train the same
  run twice: a driver claims a run before training it, by creating `claims/<key>.json` exclusively
  (`O_CREAT | O_EXCL`, atomic on POSIX and NFSv3+) with its host, pid and a heartbeat it refreshes. A claim
  whose heartbeat is older than `CLAIM_STALE_S`, or whose process is gone from this host, is stale and is
  taken over (under a lock, so that only one driver takes it).

Each record is written to a temporary file in the store folder and moved into place with `os.replace`,
which is atomic on POSIX: a reader sees either no file or a whole one, however many processes write at
once and wherever a writer is killed. A file that is still unreadable (copied in half, edited by hand, or
written by another tool) is skipped with a warning and its run is trained again. A store keyed by an older
identity rule is carried over by `optsweep store rekey` (`runs.view.rekey`).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import enum
import fcntl
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from ..jsonio import write_json
from ..provenance import stable_hash

log = logging.getLogger(__name__)


class RunStatus(str, enum.Enum):
    """A run's life: how it ended (`skipped` configs were never trainable, e.g. warmup beyond the run)."""

    OK = "ok"  # finished with a finite held-out loss at the full budget
    DIVERGED = "diverged"  # a result: the divergence rule stopped it (or its loss was not finite)
    FAILED = "failed"  # a fault (the trainer raised, the worker died): missing data, trained again later
    SKIPPED = "skipped"  # an invalid config, never trained and never stored

    def __str__(self) -> str:
        return self.value


CLAIM_HEARTBEAT_S = 30.0  # how often a driver refreshes the claims it holds
CLAIM_STALE_S = 120.0  # a claim not refreshed for this long belongs to a dead driver

# Settings that say how a run is laid out or where it writes, not where it ends.
LAYOUT_SETTINGS = ("threads_per_worker", "micro_batch_size", "checkpoint_every_s")


def run_key(spec: dict[str, Any], trainer: str, trainer_code: str) -> str:
    """The store key of a run: its spec without the settings that cannot change the result."""
    identity = copy.deepcopy(spec)
    identity["scale"].pop("name", None)  # a label: two scales of the same shape share their runs
    identity.pop("checkpoint_dir", None)
    if identity.get("data"):
        identity["data"].pop("dir", None)  # where the shards live, not what they hold (that is the hash)
    if identity.get("train"):
        for setting in LAYOUT_SETTINGS:
            identity["train"].pop(setting, None)
    return stable_hash({"spec": identity, "trainer": trainer, "trainer_code": trainer_code}, length=24)


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One finished run. `loss` is None unless the status is "ok"; `error` holds a failed run's traceback."""

    key: str
    status: RunStatus
    loss: float | None
    spec: dict[str, Any]
    trainer: str
    trainer_code: str
    result: dict[str, Any] | None = None
    error: str | None = None
    attempts: int = 1
    wall_s: float = 0.0
    created: str = dataclasses.field(
        default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", RunStatus(self.status))

    @property
    def is_result(self) -> bool:
        """Whether this record answers its spec for good (a failed run is trained again)."""
        return self.status in (RunStatus.OK, RunStatus.DIVERGED)


class RunStore:
    """A folder of `<key>.json` run records, and `checkpoints/<key>/` for runs in progress."""

    def __init__(self, root: Path | str):
        # Absolute (a relative `study.store` means relative to where the driver runs, the project root): the
        # checkpoint folders in run specs then mean the same to a worker started in another folder (a Ray node).
        self.root = Path(os.path.abspath(root))

    def path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def checkpoint_dir(self, key: str) -> Path:
        """Where a run in progress keeps its checkpoint (the trainer writes it; `put` deletes it)."""
        return self.root / "checkpoints" / key

    def get(self, key: str) -> RunRecord | None:
        path = self.path(key)
        return self._read(path) if path.exists() else None

    def get_result(self, key: str) -> RunRecord | None:
        """The stored record if it is a result (ok or diverged); None for a missing or failed run."""
        record = self.get(key)
        return record if record is not None and record.is_result else None

    def put(self, key: str, record: RunRecord) -> None:
        """Store a record; a result's checkpoint is no longer needed (a failed run keeps it to resume)."""
        if record.key != key:
            raise ValueError(f"record key {record.key!r} does not match {key!r}")
        write_json(self.path(key), {**dataclasses.asdict(record), "status": record.status.value})
        if record.is_result:
            shutil.rmtree(self.checkpoint_dir(key), ignore_errors=True)

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def in_progress(self) -> list[str]:
        """Keys with a checkpoint but no result: runs interrupted (or running now) somewhere."""
        folder = self.root / "checkpoints"
        keys = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        return [key for key in keys if self.get_result(key) is None]

    def __iter__(self) -> Iterator[RunRecord]:
        for path in sorted(self.root.glob("*.json")):
            record = self._read(path)
            if record is not None:
                yield record

    def _read(self, path: Path) -> RunRecord | None:
        try:
            return RunRecord(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as error:
            log.warning("run store: ignoring unreadable %s (%s: %s); its run will be trained again",
                        path, type(error).__name__, error)
            return None


@dataclasses.dataclass(frozen=True)
class Claim:
    """Who is training a run: a driver on a host, alive while its heartbeat is fresh."""

    owner: str
    host: str
    pid: int
    heartbeat: float

    def is_stale(self, now: float) -> bool:
        if now - self.heartbeat > CLAIM_STALE_S:
            return True
        if self.host == socket.gethostname():
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
        return False


class RunClaims:
    """Exclusive claims on runs in a store's `claims/` folder, held by one driver (`owner`)."""

    def __init__(self, store: RunStore):
        self.folder = store.root / "claims"
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.held: set[str] = set()
        self._lock = threading.Lock()  # the heartbeat thread refreshes while the driver claims and releases

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def _claim(self) -> Claim:
        return Claim(self.owner, socket.gethostname(), os.getpid(), time.time())

    def _create(self, key: str) -> bool:
        try:
            fd = os.open(self._path(key), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as handle:
            json.dump(dataclasses.asdict(self._claim()), handle)
        return True

    def read(self, key: str) -> Claim | None:
        try:
            return Claim(**json.loads(self._path(key).read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError):  # being written right now: treat as fresh
            return Claim("?", "?", -1, time.time())

    def acquire(self, key: str) -> bool:
        """Claim a run for this driver; False when another live driver holds it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if key in self.held or self._create(key):
                self.held.add(key)
                return True
        with open(self.folder / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one driver at a time decides a take-over
            current = self.read(key)
            if current is not None and not current.is_stale(time.time()):
                return False
            if current is not None:
                log.warning("run store: taking over the stale claim of %s on run %s", current.owner, key)
            self._path(key).unlink(missing_ok=True)
            with self._lock:
                if self._create(key):
                    self.held.add(key)
                    return True
        return False

    def release(self, key: str) -> None:
        with self._lock:
            if key in self.held:
                self.held.discard(key)
                current = self.read(key)
                if current is not None and current.owner == self.owner:
                    self._path(key).unlink(missing_ok=True)

    def refresh(self) -> None:
        """Renew the heartbeat of every claim held (atomically: a reader sees the old or the new one)."""
        with self._lock:
            for key in self.held:
                write_json(self._path(key), dataclasses.asdict(self._claim()))

    def release_all(self) -> None:
        for key in list(self.held):
            self.release(key)
