"""What the executors exchange: a task (one run's spec), an attempt at it, its final outcome; the inbox that
takes tasks while a pool runs, and the tasks waiting for a free worker."""

from __future__ import annotations

import collections
import dataclasses
import threading
from typing import Any

INBOX_POLL_S = 0.05  # how often a serving pool looks for newly submitted tasks while its workers train


@dataclasses.dataclass(frozen=True)
class Task:
    key: str
    spec: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One try at one run, as its worker reports it."""

    result: dict[str, Any] | None
    error: str | None  # the traceback when the trainer raised
    wall_s: float
    device_check: str | None = None  # after a failed try: why the device check failed, None if it passed


@dataclasses.dataclass(frozen=True)
class Outcome:
    """A task's end: the trainer's result, or None and the error of its last attempt."""

    key: str
    spec: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    attempts: int
    wall_s: float


class TaskInbox:
    """Tasks handed to a serving pool by other threads, one batch per submission (a search's line); `finished`
    once closed and empty."""

    def __init__(self) -> None:
        self._batches: list[list[Task]] = []
        self._speculative: list[Task] = []
        self._closed = False
        self._changed = threading.Condition()

    def submit(self, tasks: list[Task], speculative: bool = False) -> None:
        with self._changed:
            if speculative:
                self._speculative.extend(tasks)
            elif tasks:
                self._batches.append(list(tasks))
            self._changed.notify_all()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def take(self) -> tuple[list[list[Task]], list[Task]]:
        """(batches of tasks waited for, speculative tasks) submitted since the last call."""
        with self._changed:
            taken = (self._batches, self._speculative)
            self._batches, self._speculative = [], []
            return taken

    def wait(self, timeout: float) -> None:
        with self._changed:
            if not self._batches and not self._speculative and not self._closed:
                self._changed.wait(timeout)

    def finished(self) -> bool:
        with self._changed:
            return self._closed and not self._batches and not self._speculative


@dataclasses.dataclass
class _Batch:
    tasks: collections.deque[Task]
    passed_over: int = 0  # tasks of younger batches started while this one waited


class WaitingTasks:
    """The tasks a pool has yet to start, in the order they start:
    1. retries (their runs had started), each on a worker other than the one it failed on;
    2. a task of the batch with the fewest tasks still waiting, the oldest among equals: a search moves on only
       once its whole line is back, so finishing lines first keeps the most searches submitting work; but a
       batch passed over by `patience` tasks of younger batches goes first, so that no search starves behind
       the others' short lines (and is left to run its chain of lines alone at the end);
    3. speculative tasks, on workers that nothing else needs."""

    def __init__(self, patience: int, tasks: list[Task] | None = None) -> None:
        self.patience = patience
        self._retries: list[tuple[Task, int, int | None]] = []  # (task, attempt, the worker it failed on)
        self._batches: list[_Batch] = []
        self._speculative: collections.deque[Task] = collections.deque()
        self.add(tasks or [])

    def add(self, batch: list[Task], speculative: bool = False) -> None:
        if speculative:
            self._speculative.extend(batch)
        elif batch:
            self._batches.append(_Batch(collections.deque(batch)))

    def take_from(self, inbox: TaskInbox) -> None:
        batches, speculative = inbox.take()
        for batch in batches:
            self.add(batch)
        self.add(speculative, speculative=True)

    def retry(self, task: Task, attempt: int, failed_on: int | None = None) -> None:
        self._retries.append((task, attempt, failed_on))

    def __bool__(self) -> bool:
        return bool(self._retries or self._batches or self._speculative)

    def pop(self, worker: int | None = None) -> tuple[Task, int] | None:
        """The next task for `worker` to start and its attempt number; None if only retries that failed on
        it are waiting. Without a worker (a pool of one), any task."""
        for index, (task, attempt, failed_on) in enumerate(self._retries):
            if worker is None or failed_on != worker:
                del self._retries[index]
                return task, attempt
        if self._batches:
            chosen = next((i for i, batch in enumerate(self._batches) if batch.passed_over >= self.patience),
                          min(range(len(self._batches)), key=lambda i: len(self._batches[i].tasks)))
            for older in self._batches[:chosen]:
                older.passed_over += 1
            batch = self._batches[chosen]
            task = batch.tasks.popleft()
            if not batch.tasks:
                del self._batches[chosen]
            return task, 1
        if self._speculative:
            return self._speculative.popleft(), 1
        return None
