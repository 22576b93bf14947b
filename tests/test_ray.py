"""The Ray backend (`study.executor: ray`) on real Ray clusters: a private in-process one (`local`) and two
nodes started with `ray start` on this machine. Synthetic trainers; every cluster is small (1-2 CPUs,
80-100 MB object stores) and stopped by the test that started it."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import psutil
import pytest

import optsweep.testing.trainers as synth
from optsweep.cli import main
from optsweep.params.settings import ParamsError, load_params
from optsweep.params.study import StudySettings, TrainSettings
from optsweep.runs.store import RunStore
from optsweep.search import run_sweep
from test_sweep_cli import COMPARED, stored, wait_until

RAY = str(Path(sys.executable).parent / "ray")
NODE_CPUS = 1
OBJECT_STORE = "80000000"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ray_processes(pattern: str) -> list[str]:
    listed = subprocess.run(["pgrep", "-fa", pattern], capture_output=True, text=True).stdout
    return [line for line in listed.splitlines() if "pgrep" not in line]


def reference_sweep(folder: Path, trainer: str) -> dict:
    """The same sweep on the local backend (inline), for comparison."""
    return run_sweep(load_params(synth.write_study(folder, trainer)), "a", folder / "a.json", progress=False)


def comparable(result: dict) -> dict:
    return {key: result[key] for key in COMPARED}


# --- no cluster needed ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("train", "per_gpu", "nodes", "expected"),
    [
        ({"device": "auto"}, 1, [{"CPU": 8, "GPU": 2}, {"CPU": 8, "GPU": 2}], (4, 1, 1.0)),
        ({"device": "cuda", "threads_per_worker": 2}, 2, [{"CPU": 8, "GPU": 2}], (4, 2, 0.5)),
        ({"device": "cpu", "threads_per_worker": 2}, 1, [{"CPU": 8, "GPU": 2}, {"CPU": 3}], (5, 2, 0.0)),
        ({"device": "auto"}, 1, [{"CPU": 2}, {"CPU": 1}], (3, 1, 0.0)),
    ],
)
def test_actors_per_gpu_or_per_cpu_threads(train, per_gpu, nodes, expected):
    from optsweep.execution.ray_cluster import plan_actors

    shape = plan_actors(TrainSettings(**train), per_gpu, nodes)
    assert (shape.count, shape.num_cpus, shape.num_gpus) == expected


@pytest.mark.parametrize(
    ("train", "per_gpu", "nodes", "message"),
    [
        ({"device": "cuda"}, 1, [{"CPU": 4}], "study.train.device: 'cuda' but the Ray cluster's 1 node(s) have no GPU"),
        ({"device": "cuda", "threads_per_worker": 2}, 4, [{"CPU": 8, "GPU": 2}],
         "study.workers_per_gpu: 4 workers per GPU x 2 threads_per_worker need 16 CPUs on a node with 2 GPU(s)"),
        ({"device": "cpu", "threads_per_worker": 4}, 1, [{"CPU": 2}, {"CPU": 3}],
         "study.train.threads_per_worker: 4 CPUs per worker fit on no node of the Ray cluster (the largest has 3"),
    ],
)
def test_a_cluster_that_cannot_hold_the_workers_is_a_one_line_error(train, per_gpu, nodes, message):
    from optsweep.execution.ray_cluster import plan_actors

    with pytest.raises(ParamsError) as error:
        plan_actors(TrainSettings(**train), per_gpu, nodes)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_an_unreachable_head_fails_in_one_line_before_any_run(tmp_path, capsys):
    address = f"127.0.0.1:{free_port()}"  # bound a moment ago, nobody listens now
    params = synth.write_study(tmp_path, "bowl", study_executor="ray", study_ray={"address": address})
    code = main(["sweep", "--params", str(params), "--scale", "a", "--out", str(tmp_path / "a.json")])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1
    assert f"study.ray.address: no Ray head answers at {address}" in error
    assert not (tmp_path / "runs").exists()


def test_a_bad_address_setting_names_what_is_allowed():
    with pytest.raises(ValueError, match="must be 'local', 'auto' or host:port of a Ray head, got 'ray://x'"):
        StudySettings(name="t", ray={"address": "ray://x"})


def test_the_local_backend_never_imports_ray(tmp_path):
    params = synth.write_study(tmp_path, "bowl", study_workers=2)
    script = ("import sys; from optsweep.params.settings import load_params; from optsweep.search import run_sweep; "
              f"run_sweep(load_params({str(params)!r}), 'a', {str(tmp_path / 'a.json')!r}, progress=False); "
              "print(sorted(m for m in ('ray', 'wandb') if m in sys.modules))")
    shown = subprocess.run([sys.executable, "-c", script], env=synth.cli_env(), capture_output=True, text=True,
                           timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == "[]"


# --- a private in-process cluster ------------------------------------------------------------------------


def test_a_local_ray_cluster_finds_the_local_backends_best_training_each_config_once(tmp_path):
    reference = reference_sweep(tmp_path / "reference", "bowl")
    calls = tmp_path / "calls.txt"
    params = synth.write_study(tmp_path / "ray", "bowl", study_workers=2, study_executor="ray",
                               study_ray={"address": "local", "dashboard": False})
    out = tmp_path / "ray" / "a.json"
    # The driver starts the cluster, whose workers inherit its environment (PYTHONPATH, SYNTH_CALLS).
    sweep = subprocess.run(sweep_command(params, out), env=synth.cli_env(SYNTH_CALLS=str(calls)),
                           capture_output=True, text=True, timeout=300)
    assert sweep.returncode == 0, sweep.stderr
    result = json.loads(out.read_text())
    assert comparable(result) == comparable(reference)
    assert "ray: 2 workers" in sweep.stderr
    counts = collections.Counter(synth.read_calls(calls))
    assert set(counts.values()) == {1} and len(counts) == result["compute"]["runs_planned"]
    assert stored(tmp_path / "ray" / "runs") == len(counts)
    assert ray_processes("raylet") == []  # the private cluster stopped with the sweep


# --- two nodes on the loopback address -------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes (head + worker) of 1 CPU each on 127.0.0.1, started in a folder of their own (not the
    repository: nothing may depend on where `ray start` ran), with the synthetic trainers' instrumentation
    files in that folder (Ray workers see the environment of `ray start`, not the driver's)."""
    folder = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths live under it
    # No token authentication on a loopback test cluster (its drivers, in this process or not, agree).
    patch = pytest.MonkeyPatch()
    patch.setenv("RAY_AUTH_MODE", "disabled")
    env = synth.cli_env(SYNTH_CALLS=str(folder / "calls.txt"), SYNTH_MARKS=str(folder / "marks"),
                        SYNTH_PAUSE=str(folder / "pause"), SYNTH_SLEEP="0.2", RAY_USAGE_STATS_ENABLED="0")
    address = f"127.0.0.1:{free_port()}"
    common = ["--node-ip-address=127.0.0.1", f"--num-cpus={NODE_CPUS}", "--num-gpus=0",
              f"--object-store-memory={OBJECT_STORE}"]
    try:
        subprocess.run([RAY, "start", "--head", f"--port={address.rpartition(':')[2]}", "--include-dashboard=false",
                        f"--temp-dir={folder / 't'}", *common], env=env, cwd=folder, check=True, capture_output=True,
                       timeout=240)
        subprocess.run([RAY, "start", f"--address={address}", *common], env=env, cwd=folder, check=True,
                       capture_output=True, timeout=240)
        yield address, folder
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)
        patch.undo()
        assert ray_processes("raylet") == []


def ray_study(folder: Path, address: str, trainer: str, **sections) -> Path:
    return synth.write_study(folder, trainer, study_executor="ray",
                             study_ray={"address": address, "progress_every_s": 0.1}, **sections)


def sweep_command(params: Path, out: Path) -> list[str]:
    return [synth.OPTSWEEP, "sweep", "--params", str(params), "--scale", "a", "--out", str(out)]


def new_calls(folder: Path, before: int) -> collections.Counter:
    return collections.Counter(synth.read_calls(folder / "calls.txt")[before:])


def test_two_nodes_find_the_local_backends_best_training_each_config_once(cluster, tmp_path):
    address, instruments = cluster
    reference = reference_sweep(tmp_path / "reference", "reporter")
    before = len(synth.read_calls(instruments / "calls.txt"))
    params, out = ray_study(tmp_path / "ray", address, "reporter"), tmp_path / "ray" / "a.json"
    sweep = subprocess.run(sweep_command(params, out), env=synth.cli_env(), capture_output=True, text=True,
                           timeout=300)
    assert sweep.returncode == 0, sweep.stderr
    result = json.loads(out.read_text())
    assert comparable(result) == comparable(reference)
    counts = new_calls(instruments, before)
    assert set(counts.values()) == {1} and len(counts) == result["compute"]["runs_planned"]
    workers = re.search(r"ray: 2 workers \((.*)\); Ray dashboard", sweep.stderr)
    assert workers and workers.group(1).count(" on ") == 2  # one actor on each node
    # Progress lines of runs in flight: node, device, step, loss, tokens/s, ETA.
    assert re.search(r"run [0-9a-f]{8} on \S+ node [0-9a-f]{6} cpu \(pid \d+\): step 2/4 loss \d+\.\d{4} "
                     r"1\.5k tok/s ETA \dm\d\ds", sweep.stderr), sweep.stderr


def test_a_phase_on_two_nodes_serves_every_scale_from_one_pool(cluster, tmp_path):
    """`optsweep sweep --phase`: both scales' searches share the cluster's actors; each config trained once."""
    address, instruments = cluster
    before = len(synth.read_calls(instruments / "calls.txt"))
    params = ray_study(tmp_path, address, "bowl", search={"passes": 3, "tolerance": 3e-3, "speculate": 1})
    sweep = subprocess.run([synth.OPTSWEEP, "sweep", "--params", str(params), "--phase", "phase1", "--out",
                            str(tmp_path / "sweeps")], env=synth.cli_env(), capture_output=True, text=True,
                           timeout=300)
    assert sweep.returncode == 0, sweep.stderr
    results = {name: json.loads((tmp_path / "sweeps" / f"{name}.json").read_text()) for name in ("a", "b")}
    trained = sum(result["compute"]["runs_trained"] for result in results.values())
    assert len(synth.read_calls(instruments / "calls.txt")) - before == trained == stored(tmp_path / "runs")
    assert sweep.stderr.count("ray: 2 workers") == 1  # one pool for the whole phase


def test_a_killed_actor_is_replaced_and_its_run_retried(cluster, tmp_path):
    address, instruments = cluster
    from optsweep.execution.ray_cluster import RayExecutor
    from optsweep.execution.tasks import Task

    study = load_params(ray_study(tmp_path, address, "killer")).study
    tasks = [Task(f"k{i}", {"hparams": {"lr": 1e-3 * (i + 1), "weight_decay": 0.1, "beta2": 0.95}, "seed": 7})
             for i in range(3)]
    with RayExecutor(study) as executor:
        outcomes = list(executor.run(tasks))
        places = {slot.place for slot in executor._slots}
    assert sorted(outcome.key for outcome in outcomes) == ["k0", "k1", "k2"]
    assert all(outcome.error is None and outcome.attempts == 2 for outcome in outcomes)
    assert len(places) == 2  # the replacements are up, one per node


def test_a_sigkilled_driver_loses_nothing_and_a_rerun_retrains_nothing_finished(cluster, tmp_path):
    address, instruments = cluster
    reference = reference_sweep(tmp_path / "reference", "bowl")
    pause, before = instruments / "pause", len(synth.read_calls(instruments / "calls.txt"))
    params, out = ray_study(tmp_path / "ray", address, "bowl"), tmp_path / "ray" / "a.json"
    runs = tmp_path / "ray" / "runs"
    driver = subprocess.Popen(sweep_command(params, out), env=synth.cli_env(), start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: sum(new_calls(instruments, before).values()) >= 4, timeout=240)
        pause.touch()  # runs in flight finish and are stored; the next ones wait inside the trainer
        settled: list[tuple[int, int]] = []
        wait_until(lambda: settled.append((sum(new_calls(instruments, before).values()), stored(runs))) or
                   (len(settled) > 40 and len(set(settled[-40:])) == 1 and settled[-1][0] == settled[-1][1]),
                   timeout=120)
        os.killpg(driver.pid, signal.SIGKILL)
        driver.communicate(timeout=30)
        # Ray ends a dead driver's actors (and the runs paused inside them) before they train anything more.
        wait_until(lambda: ray_processes("ray::TrainerActor") == [], timeout=120)
    finally:
        pause.unlink(missing_ok=True)
    finished_before_kill = sum(new_calls(instruments, before).values())
    assert not out.exists() and len(list(RunStore(runs))) == finished_before_kill >= 4

    rerun = subprocess.run(sweep_command(params, out), env=synth.cli_env(), capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    result = json.loads(out.read_text())
    assert comparable(result) == comparable(reference)
    assert result["compute"]["runs_reused"] == finished_before_kill
    counts = new_calls(instruments, before)
    assert set(counts.values()) == {1} and len(counts) == result["compute"]["runs_planned"]


def test_a_head_started_in_another_folder_runs_a_sweep_from_the_repository(cluster, tmp_path):
    """The nodes run in the fixture's folder; the sweep runs in a project whose params name the store
    relatively. Every run is ok, wrote its checkpoint under the project's store (the spec's absolute path), and
    its actor had the thread limit and the CUDA allocator setting, which `ray start`'s environment lacks."""
    address, instruments = cluster
    project = tmp_path / "project"
    params = ray_study(project, address, "checkpointing", study_store="runs")
    sweep = subprocess.run(sweep_command(params, project / "a.json"), cwd=project,
                           env=synth.cli_env(OPTSWEEP_ROOT=str(project)), capture_output=True, text=True, timeout=300)
    assert sweep.returncode == 0, sweep.stderr
    records = list(RunStore(project / "runs"))
    assert records and {record.status.value for record in records} == {"ok"}
    for record in records:
        checkpoints = str(project / "runs" / "checkpoints" / record.key)
        assert record.spec["checkpoint_dir"] == record.result["checkpoint_dir"] == checkpoints
        assert record.result["cwd"] != str(project)  # the actor did not run where the driver did
        assert (record.result["omp_num_threads"], record.result["cuda_allocator"]) == ("1", "expandable_segments:True")
    assert list(instruments.rglob("checkpoint.txt")) == []  # nothing landed where the nodes were started


def test_a_run_without_progress_on_ray_is_killed_and_retried_from_its_checkpoint(cluster, tmp_path, capsys):
    """The watchdog's rule on actors: both runs hang once; each actor is killed, replaced, and the run retried."""
    from optsweep.execution.ray_cluster import RayExecutor
    from optsweep.execution.tasks import Task

    address, _ = cluster
    study = load_params(ray_study(tmp_path, address, "hangs_once", study_train={"device": "cpu",
                                                                                "stall_timeout_s": 2})).study
    tasks = [Task(f"h{i}", {"hparams": {"lr": 1e-3 * (i + 1), "weight_decay": 0.1, "beta2": 0.95}, "seed": 13})
             for i in range(2)]
    with RayExecutor(study) as executor:
        outcomes = list(executor.run(tasks))
        left = len(executor._slots)
    assert sorted(outcome.key for outcome in outcomes) == ["h0", "h1"]
    assert all(outcome.error is None and outcome.attempts == 2 for outcome in outcomes) and left == 2
    stalls = [line for line in capsys.readouterr().err.splitlines() if "made no progress" in line]
    assert len(stalls) == 2 and all(re.search(r"on Ray worker \d on .* made no progress for \d+ s "
                                              r"\(study.train.stall_timeout_s\): killed, retried from its checkpoint$",
                                              line) for line in stalls), stalls


def test_cuda_on_a_cluster_without_gpus_stops_before_any_run(cluster, tmp_path, capsys):
    address, _ = cluster
    params = ray_study(tmp_path, address, "bowl", study_train={"device": "cuda"})
    code = main(["sweep", "--params", str(params), "--scale", "a", "--out", str(tmp_path / "a.json")])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("optsweep: error")]
    assert code == 2
    assert errors == ["optsweep: error: study.train.device: 'cuda' but the Ray cluster's 2 node(s) have no GPU"]
    assert not (tmp_path / "runs").exists()


def lose_node(node_id: str, pause: Path) -> None:
    """SIGKILL one node as a lost machine goes: its raylet and every process it started (its actors' workers,
    which could otherwise still hand their result to the driver), then let the paused runs go on."""
    flag = f"--node_id={node_id}"
    (raylet,) = [process for process in psutil.process_iter(["name", "cmdline"])
                 if "raylet" in (process.info["name"] or "") and flag in (process.info["cmdline"] or [])]
    for process in [*raylet.children(recursive=True), raylet]:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    pause.unlink()


def test_a_lost_node_leaves_a_smaller_pool_that_finishes_with_a_true_line(cluster, tmp_path, capsys):
    """Last in this module: it takes the cluster's worker node away. Both actors are inside a run (paused) when
    the worker node's raylet is killed; that run is retried on the head's actor, which finishes the sweep."""
    import ray

    from optsweep.execution.ray_cluster import RayExecutor
    from optsweep.execution.tasks import Task

    address, instruments = cluster
    pause = instruments / "pause"
    study = load_params(ray_study(tmp_path, address, "bowl")).study
    tasks = [Task(f"n{i}", {"hparams": {"lr": 1e-3 * (i + 1), "weight_decay": 0.1, "beta2": 0.95}, "seed": 11})
             for i in range(4)]
    pause.touch()
    try:
        with RayExecutor(study) as executor:
            executor.start()
            head = ray.get_runtime_context().get_node_id()  # a driver on the head's machine joins the head
            (far,) = [slot.node for slot in executor._slots if slot.node != head]
            loss = threading.Timer(3.0, lose_node, args=(far, pause))  # once both actors are inside a run
            loss.start()
            outcomes = list(executor.run(tasks))
            left = len(executor._slots)
        loss.join()
    finally:
        pause.unlink(missing_ok=True)
    assert sorted(outcome.key for outcome in outcomes) == ["n0", "n1", "n2", "n3"]
    assert all(outcome.error is None for outcome in outcomes) and 2 in {outcome.attempts for outcome in outcomes}
    assert left == 1
    errors = capsys.readouterr().err
    (dropped,) = [line for line in errors.splitlines() if line.startswith("optsweep: ") and " dropped: " in line]
    assert re.search(rf"dropped: its node \S+ \({far[:6]}\) was lost; the pool goes on with 1 of 2 workers", dropped)
    assert "other jobs hold" not in errors
