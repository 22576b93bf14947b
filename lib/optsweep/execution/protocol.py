"""What the search relies on from an executor, declared once: every executor class (the local pool, the Ray
actors, the tracked wrapper, a search's share of a phase's pool) satisfies these by shape, not by inheritance."""

from __future__ import annotations

from typing import Any, Iterator, Protocol, Self

from .tasks import Outcome, Task, TaskInbox


class Runner(Protocol):
    """What one search trains its runs on: a pool of its own, or its share of the pool of a phase."""

    def start(self) -> None:
        """Get ready to train (workers up, the device preflight passed); `run` does it too, this is for failing
        before anything else happens."""

    def run(self, tasks: list[Task]) -> Iterator[Outcome]:
        """Train every task; yield each outcome as soon as it is final (after any retries)."""


class Backend(Runner, Protocol):
    """A pool of workers that a sweep or a phase opens (`make_executor`): a context manager, so that no worker
    outlives it; with more than one worker (`inline` false) it can also serve the searches of a phase."""

    @property
    def inline(self) -> bool:
        """True when there is one worker, the main process itself: nothing to share between searches."""

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc_info: Any) -> None: ...

    def serve(self, inbox: TaskInbox) -> Iterator[Outcome]:
        """Train whatever other threads submit to `inbox` until it is finished; yield outcomes once final."""
