"""The run store: every finished run as one JSON file, so that no run is ever trained twice.

A run's key is a hash of what decides its result: the run spec (scale, hyperparameters, seed, data
identity, train settings), the trainer's name and the identity of the trainer's code (see
`trainer.code_identity`: comments, docstrings and formatting do not count). What cannot change the result
is left out of the key (the scale's name, where the prepared data lives, threads, micro-batches, the
checkpoint interval and folder), so that renaming a scale, moving the data or changing the thread count
reuses every stored run.

What the store guarantees:
- A record is final: an `ok` or `diverged` run is never trained again. A `failed` run (the trainer raised,
  or its worker died twice) is kept for its error text but is *not* a result: the next sweep trains it
  again, resuming from its checkpoint.
- A run in progress may keep one checkpoint in `checkpoints/<key>/` (written by the trainer, atomically);
  it is deleted once the run's record is stored.

Each record is written to a temporary file in the store folder and moved into place with `os.replace`,
which is atomic on POSIX: a reader sees either no file or a whole one, however many processes write at
once and wherever a writer is killed. A file that is still unreadable (copied in half, edited by hand, or
written by another tool) is skipped with a warning and its run is trained again.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import enum
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Iterator

from .jsonio import write_json
from .provenance import stable_hash

log = logging.getLogger(__name__)


class RunStatus(str, enum.Enum):
    """A run's life: how it ended (`skipped` configs were never trainable, e.g. warmup beyond the run)."""

    OK = "ok"  # finished with a finite held-out loss at the full budget
    DIVERGED = "diverged"  # a result: the divergence rule stopped it (or its loss was not finite)
    FAILED = "failed"  # a fault (the trainer raised, the worker died): missing data, trained again later
    SKIPPED = "skipped"  # an invalid config, never trained and never stored

    def __str__(self) -> str:
        return self.value


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
        self.root = Path(root)

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
