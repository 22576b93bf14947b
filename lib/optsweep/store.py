"""The run store: every finished run as one JSON file, so that no run is ever trained twice.

A run's key is a hash of what decides its result: the run spec (scale, hyperparameters, seed, data
identity, train settings), the trainer's name and the hash of the trainer's code. What cannot change the
result is left out of the key (the scale's name, where the prepared data lives, threads and micro-batches),
so that renaming a scale, moving the data or changing the thread count reuses every stored run.

Each record is written to a temporary file in the store folder and moved into place with `os.replace`,
which is atomic on POSIX: a reader sees either no file or a whole one, however many processes write at
once and wherever a writer is killed. A file that is still unreadable (copied in half, edited by hand, or
written by another tool) is skipped with a warning and its run is trained again.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any, Iterator, Literal

from .jsonio import write_json
from .provenance import stable_hash

log = logging.getLogger(__name__)

RunStatus = Literal["ok", "diverged", "failed"]


def run_key(spec: dict[str, Any], trainer: str, trainer_code: str) -> str:
    """The store key of a run: its spec without the settings that cannot change the result."""
    identity = copy.deepcopy(spec)
    identity["scale"].pop("name", None)  # a label: two scales of the same shape share their runs
    if identity.get("data"):
        identity["data"].pop("dir", None)  # where the shards live, not what they hold (that is the hash)
    if identity.get("train"):
        for setting in ("threads_per_worker", "micro_batch_size"):  # how a run is laid out, not where it ends
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


class RunStore:
    """A folder of `<key>.json` run records."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def get(self, key: str) -> RunRecord | None:
        path = self.path(key)
        return self._read(path) if path.exists() else None

    def put(self, key: str, record: RunRecord) -> None:
        if record.key != key:
            raise ValueError(f"record key {record.key!r} does not match {key!r}")
        write_json(self.path(key), dataclasses.asdict(record))

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
