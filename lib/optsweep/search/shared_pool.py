"""One search's view of a pool of workers that every search of a phase shares."""

from __future__ import annotations

import queue
import threading
from typing import Iterator

from ..execution.tasks import Outcome, Task, TaskInbox


class SharedPoolClient:
    """One search's view of a pool that the searches of a phase share: its runs go into the common inbox and
    only its own outcomes come back, so every worker stays busy while each search waits for its line."""

    def __init__(self, inbox: TaskInbox, routes: dict[str, queue.Queue], lock: threading.Lock):
        self.inbox, self.routes, self.lock = inbox, routes, lock
        self.outcomes: queue.Queue[Outcome | None] = queue.Queue()

    def start(self) -> None:
        """The phase started the pool (and ran the preflight) before any search began."""

    def submit(self, tasks: list[Task], speculative: bool = False) -> None:
        with self.lock:
            self.routes.update({task.key: self.outcomes for task in tasks})
        self.inbox.submit(tasks, speculative)

    def wait_for(self, keys: set[str]) -> Iterator[Outcome]:
        """This search's outcomes as they come (speculative ones too), until every key in `keys` is among them."""
        pending = set(keys)
        while pending:
            outcome = self.outcomes.get()
            if outcome is None:  # the pool stopped (Ctrl-C)
                raise KeyboardInterrupt
            pending.discard(outcome.key)
            yield outcome

    def run(self, tasks: list[Task]) -> Iterator[Outcome]:
        self.submit(tasks)
        yield from self.wait_for({task.key for task in tasks})
