"""A whole phase on one pool: the searches of every scale at once, each in its own thread."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Literal

from ..execution.backends import make_executor
from ..execution.protocol import Backend, Runner
from ..execution.tasks import TaskInbox
from ..params.settings import ParamsError, StudyParams
from ..results.documents import SweepResult, read_document, write_document
from ..runs.trainer import code_identity
from .shared_pool import SharedPoolClient
from .sweep import FailedRuns, failures_message, search_scale, study_data

Search = Callable[[str, Runner], SweepResult]  # one scale's search on a pool


def _search_in_thread(errors: list[BaseException], results: dict[str, SweepResult], name: str, search: Search,
                      executor: Runner) -> None:
    try:
        results[name] = search(name, executor)
    except BaseException as error:  # handed to the main thread, which raises it once the phase has stopped
        errors.append(error)


def run_phase(params: StudyParams, phase: Literal["phase1", "law"], out_dir: Path,
              sensitivity_path: str | None = None, progress: bool = True,
              transfer_from: Path | None = None) -> dict[str, SweepResult]:
    """The searches of every scale of a phase at once, on one pool of workers.

    Each scale's coordinate descent runs in its own thread and submits its runs to the shared pool, which
    the main thread serves (so Ctrl-C, worker deaths and retries behave as for one sweep). A scale's result
    file is rewritten only when its result changed (`SweepResult.same_search`): a DVC stage downstream of an
    untouched scale then sees the same file and does not run again."""
    names = list(params.scales if phase == "phase1" else params.law_scales)
    code_identity(params.study.trainer)
    data = study_data(params)
    results: dict[str, SweepResult] = {}
    errors: list[BaseException] = []

    def search(name: str, executor: Runner) -> SweepResult:
        return search_scale(params, name, sensitivity_path, transfer_from, data, executor, progress)

    with make_executor(params.study) as executor:
        executor.start()  # workers and the device preflight before any search begins
        if executor.inline:  # one worker: nothing to share, the scales go one after another
            for name in names:
                _search_in_thread(errors, results, name, search, executor)
        else:
            _serve_phase(executor, names, errors, results, search)
    out_dir.mkdir(parents=True, exist_ok=True)  # a phase with no scales still has its (empty) folder
    for name, result in results.items():
        _write_if_changed(out_dir / f"{name}.json", result)
    if errors:
        raise errors[0]
    failures = failures_message(list(results.values()))
    if failures:
        raise FailedRuns(failures)
    return results


def _serve_phase(executor: Backend, names: list[str], errors: list[BaseException],
                 results: dict[str, SweepResult], search: Search) -> None:
    inbox, routes, lock = TaskInbox(), {}, threading.Lock()
    threads = [threading.Thread(target=_search_in_thread, name=f"search-{name}", daemon=True,
                                args=(errors, results, name, search, SharedPoolClient(inbox, routes, lock)))
               for name in names]
    for thread in threads:
        thread.start()
    def close_when_searched() -> None:
        for thread in threads:
            thread.join()
        inbox.close()

    threading.Thread(target=close_when_searched, name="phase-closer", daemon=True).start()
    try:
        for outcome in executor.serve(inbox):
            with lock:
                route = routes.pop(outcome.key)
            route.put(outcome)
    except KeyboardInterrupt:
        with lock:
            for route in routes.values():
                route.put(None)
        for thread in threads:
            thread.join()
        raise
    for thread in threads:
        thread.join()


def _write_if_changed(path: Path, result: SweepResult) -> None:
    try:
        current = read_document(path, SweepResult) if path.is_file() else None
    except ParamsError:
        current = None
    if current is None or not current.same_search(result):
        write_document(path, result)
