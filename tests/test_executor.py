"""The executor: persistent spawned workers, device pinning, retries of crashed runs and killed workers, broken
workers retired and the pool shrinking when a replacement cannot start."""

from __future__ import annotations

import os
import re

import pytest

from optsweep.execution.pool import Executor
from optsweep.execution.tasks import Task, WaitingTasks
from optsweep.execution.workers import worker_environments
from optsweep.params.settings import ParamsError
from optsweep.params.study import StudySettings, TrainSettings


def tasks(count: int) -> list[Task]:
    return [Task(f"k{i}", {"hparams": {"lr": 1e-3 * (i + 1), "weight_decay": 0.1, "beta2": 0.95}, "seed": 0})
            for i in range(count)]


def study(**settings) -> StudySettings:
    return StudySettings(name="t", **settings)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_workers_persist_across_runs_and_batches_and_use_their_thread_limit():
    environments = worker_environments(study(workers=2, train={"device": "cpu", "threads_per_worker": 3}))
    with Executor("optsweep.testing.trainers:whoami", environments) as executor:
        first = list(executor.run(tasks(6)))
        second = list(executor.run(tasks(3)))
    assert sorted(outcome.key for outcome in first) == [f"k{i}" for i in range(6)]
    pids = {outcome.result["pid"] for outcome in first + second}
    assert len(pids) == 2 and os.getpid() not in pids
    assert {outcome.result["omp_num_threads"] for outcome in first} == {"3"}
    assert {outcome.attempts for outcome in first} == {1} and all(outcome.error is None for outcome in first)
    assert all(gone(pid) for pid in pids)  # closed with the context


def test_one_worker_trains_inline_in_this_process():
    with Executor("optsweep.testing.trainers:whoami", worker_environments(study(workers=1))) as executor:
        outcomes = list(executor.run(tasks(2)))
    assert {outcome.result["pid"] for outcome in outcomes} == {os.getpid()}


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, ["0", "1"]),  # one worker per GPU by default
        ({"workers_per_gpu": 2}, ["0", "1", "0", "1"]),  # round robin: every GPU busy before any gets two
        ({"workers": 3}, ["0", "1", "0"]),  # an explicit count wins
    ],
)
def test_gpu_workers_are_pinned_round_robin(settings, expected):
    environments = worker_environments(study(**settings), gpus=["0", "1"])
    assert [env["CUDA_VISIBLE_DEVICES"] for env in environments] == expected


def test_cpu_device_ignores_gpus_and_cuda_without_gpus_is_an_error():
    environments = worker_environments(study(workers=2, train={"device": "cpu"}), gpus=["0"])
    assert len(environments) == 2 and all("CUDA_VISIBLE_DEVICES" not in env for env in environments)
    with pytest.raises(ParamsError, match="study.train.device: 'cuda' but no GPU is visible"):
        worker_environments(study(train={"device": "cuda"}), gpus=[])


def test_workers_see_only_their_pinned_gpu():
    environments = worker_environments(study(), gpus=["3", "5"])
    with Executor("optsweep.testing.trainers:whoami", environments) as executor:
        outcomes = list(executor.run(tasks(6)))
    pinned = {outcome.result["pid"]: outcome.result["cuda_visible_devices"] for outcome in outcomes}
    assert sorted(pinned.values()) == ["3", "5"]


def test_a_killed_worker_is_replaced_and_its_run_retried(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTH_MARKS", str(tmp_path / "marks"))
    with Executor("optsweep.testing.trainers:killer", worker_environments(study(workers=2))) as executor:
        outcomes = list(executor.run(tasks(4)))
        alive = [worker.process.is_alive() for worker in executor._slots]
    assert all(outcome.error is None and outcome.attempts == 2 for outcome in outcomes)
    assert len({outcome.result["pid"] for outcome in outcomes}) >= 2  # trained by replacement workers
    assert alive == [True, True]


def test_a_crash_is_retried_once_then_reported_with_its_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTH_MARKS", str(tmp_path / "marks"))
    environments = worker_environments(study(workers=2))
    with Executor("optsweep.testing.trainers:flaky", environments) as executor:
        transient = list(executor.run(tasks(3)))
    with Executor("optsweep.testing.trainers:broken_at_high_lr", environments) as executor:
        broken = list(executor.run([Task("high", {"hparams": {"lr": 0.1}, "seed": 0})]))
    assert all(outcome.error is None and outcome.attempts == 2 for outcome in transient)
    assert broken[0].result is None and broken[0].attempts == 2
    assert "RuntimeError: cannot train lr 0.1" in broken[0].error


def test_a_worker_that_cannot_import_the_trainer_stops_the_pool():
    with pytest.raises(ParamsError, match="has no callable 'missing' .in a worker process"):
        with Executor("optsweep.testing.trainers:missing", worker_environments(study(workers=2))) as executor:
            list(executor.run(tasks(2)))


@pytest.mark.parametrize("workers", [1, 2])  # inline, and a pool of worker processes
def test_a_worker_that_cannot_read_the_data_stops_the_sweep_before_any_run_naming_the_path(tmp_path, workers):
    folder = tmp_path / "prepared"
    folder.mkdir()
    for name in ("meta.json", "val.bin"):
        (folder / name).write_text("x")
    named = (rf"study.data.dir: cannot read {re.escape(str(folder / 'train.bin'))} on this worker \(No such file "
             r"or directory\); every node must see the prepared data at the same absolute path")
    with pytest.raises(ParamsError, match=named):
        with Executor("optsweep.testing.trainers:whoami", worker_environments(study(workers=workers)),
                      data_dir=str(folder)) as executor:
            list(executor.run(tasks(2)))
    (folder / "train.bin").write_text("x")
    with Executor("optsweep.testing.trainers:whoami", worker_environments(study(workers=workers)),
                  data_dir=str(folder)) as executor:
        assert all(outcome.error is None for outcome in executor.run(tasks(2)))


def test_an_interrupt_terminates_the_workers():
    environments = worker_environments(study(workers=2))
    with pytest.raises(KeyboardInterrupt):
        with Executor("optsweep.testing.trainers:whoami", environments) as executor:
            for outcome in executor.run(tasks(4)):
                pids = [worker.process.pid for worker in executor._slots]
                raise KeyboardInterrupt
    assert all(gone(pid) for pid in pids)


def stderr_lines(capsys, word: str) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if word in line]


@pytest.mark.parametrize(("error", "reason"), [
    ("device", "retired: a device error (RuntimeError: CUDA error: an illegal memory access"),
    ("plain", "retired: 2 runs in a row failed within 60 s (RuntimeError: poisoned worker)"),
])
def test_a_poisoned_worker_is_retired_and_every_run_ends_ok(tmp_path, monkeypatch, capsys, error, reason):
    """One worker of three fails every run at once (a broken GPU): its runs are retried on the others, and the
    worker is retired (at once for a CUDA error, after study.train.retire_after_fast_failures otherwise)."""
    monkeypatch.setenv("SYNTH_POISON", str(tmp_path / "poison"))
    monkeypatch.setenv("SYNTH_POISON_ERROR", error)
    monkeypatch.setenv("SYNTH_SLEEP", "0.1")
    train = TrainSettings(device="cpu", retire_after_fast_failures=2)
    with Executor("optsweep.testing.trainers:poisoned", worker_environments(study(workers=3)), train) as executor:
        outcomes = list(executor.run(tasks(12)))
        pids_left = {worker.process.pid for worker in executor._slots}
    poisoned = int((tmp_path / "poison").read_text())
    assert sorted(outcome.key for outcome in outcomes) == sorted(task.key for task in tasks(12))
    assert all(outcome.error is None for outcome in outcomes)
    assert poisoned not in {outcome.result["pid"] for outcome in outcomes} | pids_left and len(pids_left) == 3
    assert 2 in {outcome.attempts for outcome in outcomes}  # the poisoned worker's runs, retried elsewhere
    (retired,) = stderr_lines(capsys, "retired")
    assert f"pid {poisoned})" in retired and reason in retired and retired.endswith("starting a replacement")


def test_a_slot_whose_replacement_cannot_start_is_dropped_and_the_smaller_pool_finishes(tmp_path, monkeypatch,
                                                                                        capsys):
    monkeypatch.setenv("SYNTH_POISON", str(tmp_path / "poison"))
    monkeypatch.setenv("SYNTH_NO_START", str(tmp_path / "no-start"))
    with Executor("optsweep.testing.trainers:poisoned", worker_environments(study(workers=3))) as executor:
        executor.start()
        (tmp_path / "no-start").touch()  # from now on no worker can start: the GPU is gone
        outcomes = list(executor.run(tasks(8)))
        left = len(executor._slots)
    assert len(outcomes) == 8 and all(outcome.error is None for outcome in outcomes)
    assert left == 2
    (dropped,) = stderr_lines(capsys, "dropped")
    assert "dropped: its replacement cannot start: " in dropped and "the GPU fell off the bus" in dropped
    assert dropped.endswith("the pool goes on with 2 of 3 workers")


def test_the_sweep_stops_when_no_worker_is_left(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTH_NO_START", str(tmp_path / "no-start"))
    with pytest.raises(ParamsError, match=r"no worker left: the last, worker \d \(cpu, pid \d+\), was dropped"):
        with Executor("optsweep.testing.trainers:cuda_fault", worker_environments(study(workers=2))) as executor:
            executor.start()
            (tmp_path / "no-start").touch()
            list(executor.run(tasks(2)))


@pytest.mark.parametrize("hang", ["once", "always"])
def test_a_run_without_progress_is_killed_and_retried_and_a_second_stall_fails_it(tmp_path, monkeypatch, capsys,
                                                                                  hang):
    monkeypatch.setenv("SYNTH_MARKS", str(tmp_path / "marks"))
    monkeypatch.setenv("SYNTH_HANG", hang)
    train = TrainSettings(device="cpu", stall_timeout_s=1.0)
    with Executor("optsweep.testing.trainers:hangs_once", worker_environments(study(workers=2)), train) as executor:
        (outcome,) = list(executor.run(tasks(1)))
        alive = [worker.process.is_alive() for worker in executor._slots]
    assert outcome.attempts == 2 and alive == [True, True]
    stalls = stderr_lines(capsys, "made no progress")
    if hang == "once":
        assert outcome.error is None
        (stall,) = stalls
        assert re.search(r"made no progress for \d+ s \(study.train.stall_timeout_s\): killed, retried from its "
                         r"checkpoint$", stall)
    else:
        assert outcome.result is None and len(stalls) == 2 and stalls[1].endswith("killed, failed")
        assert outcome.error == ("no progress for 1 s (study.train.stall_timeout_s): the watchdog killed its worker "
                                 "while training this run")


def test_a_run_that_keeps_reporting_progress_outlives_the_stall_timeout(capsys):
    train = TrainSettings(device="cpu", stall_timeout_s=1.0)
    with Executor("optsweep.testing.trainers:steady", worker_environments(study(workers=2)), train) as executor:
        outcomes = list(executor.run(tasks(2)))
    assert all(outcome.error is None and outcome.attempts == 1 for outcome in outcomes)
    assert stderr_lines(capsys, "made no progress") == []


def drain(waiting: WaitingTasks) -> list[tuple[str, int]]:
    order = []
    while waiting:
        task, attempt = waiting.pop()
        order.append((task.key, attempt))
    return order


def keyed(*keys: str) -> list[Task]:
    return [Task(key, {}) for key in keys]


def test_waiting_tasks_start_retries_then_the_nearest_finished_line_then_speculation():
    """A search moves on only when its whole line is back: the batch with the fewest tasks left goes first."""
    waiting = WaitingTasks(8, keyed("a1", "a2", "a3"))
    waiting.add(keyed("b1", "b2"))
    waiting.add(keyed("s1"), speculative=True)
    waiting.add(keyed("c1", "c2"))
    first = waiting.pop()
    waiting.retry(first[0], 2)
    assert first == (Task("b1", {}), 1)
    assert drain(waiting) == [("b1", 2), ("b2", 1), ("c1", 1), ("c2", 1), ("a1", 1), ("a2", 1), ("a3", 1), ("s1", 1)]


def test_a_retry_waits_for_a_worker_other_than_the_one_it_failed_on():
    waiting = WaitingTasks(8, keyed("a1", "a2"))
    failed, _ = waiting.pop(0)
    waiting.retry(failed, 2, failed_on=0)
    assert waiting.pop(0) == (Task("a2", {}), 1)
    assert waiting.pop(0) is None and waiting  # only the retry is left, and worker 0 may not take it
    assert waiting.pop(1) == (Task("a1", {}), 2)


def test_a_line_passed_over_by_patience_tasks_of_younger_lines_goes_first():
    waiting = WaitingTasks(2, keyed("a1", "a2", "a3"))
    for key in ("b", "c", "d"):
        waiting.add(keyed(key))
    assert drain(waiting) == [("b", 1), ("c", 1), ("a1", 1), ("a2", 1), ("a3", 1), ("d", 1)]
