"""Runs that survive real scale: checkpoints and resume, failed is not diverged, divergence that stops,
out-of-memory halving, device preflight, no orphan workers, a run identity that only code moves."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

import optsweep.testing.trainers as synth
from conftest import small_study, write_params
from optsweep.params.settings import ParamsError, load_params
from optsweep.runs.store import RunStatus, RunStore
from optsweep.runs.trainer import code_identity, make_run_spec
from optsweep.train import loop as train_module

OPTSWEEP = synth.OPTSWEEP
REPO = Path(__file__).resolve().parents[1]


def run_cli(*arguments: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([OPTSWEEP, *arguments], capture_output=True, text=True, timeout=timeout,
                          env=env or synth.cli_env())


# --- checkpoints and resume ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uninterrupted(run_spec):
    """Scale a's run trained through without a checkpoint: what every resumed run must match bit for bit."""
    return train_module.train(run_spec("a"))


@pytest.fixture
def crashed_at_step_40(run_spec, tmp_path, monkeypatch):
    """Scale a's run, checkpointing at every sync point (16, 32), crashed at step 40: (its spec, its folder)."""
    folder = tmp_path / "ckpt"
    spec = {**run_spec("a", train={"checkpoint_every_s": 1e-9}), "checkpoint_dir": str(folder)}
    real_step = train_module.TrainingRun.step

    def crash_at_step_40(run):
        if run.steps_done == 40:
            raise RuntimeError("node lost (simulated)")
        return real_step(run)

    monkeypatch.setattr(train_module.TrainingRun, "step", crash_at_step_40)
    with pytest.raises(RuntimeError, match="node lost"):
        train_module.train(spec)  # checkpoints at the sync points 16 and 32: the newest and the previous
    monkeypatch.setattr(train_module.TrainingRun, "step", real_step)
    return spec, folder


def test_a_crashed_run_resumes_from_its_checkpoint_to_the_bitwise_same_loss(uninterrupted, crashed_at_step_40):
    spec, folder = crashed_at_step_40
    assert json.loads((folder / "progress.json").read_text())["step"] == 32  # the last sync point
    resumed = train_module.train(spec)
    assert resumed["resumed_from"] == [32]
    assert resumed["loss"] == uninterrupted["loss"]  # bitwise
    assert resumed["train_curve"] == uninterrupted["train_curve"]
    assert resumed["eval_curve"] == uninterrupted["eval_curve"]


@pytest.mark.parametrize(("truncated", "resumes_from"), [((train_module.CHECKPOINT_FILE,), [16]),
                                                         ((train_module.CHECKPOINT_FILE,
                                                           train_module.PREVIOUS_CHECKPOINT_FILE), [])])
def test_a_truncated_checkpoint_is_moved_aside_and_the_run_resumes_from_the_previous_one_or_step_0(
        uninterrupted, crashed_at_step_40, capfd, truncated, resumes_from):
    spec, folder = crashed_at_step_40
    for name in truncated:  # a save cut short by a crash or a full disk
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])
    capfd.readouterr()
    resumed = train_module.train(spec)
    assert resumed["resumed_from"] == resumes_from
    assert resumed["loss"] == uninterrupted["loss"]  # bitwise
    assert resumed["train_curve"] == uninterrupted["train_curve"]
    moved = [line for line in capfd.readouterr().err.splitlines() if "moved it aside" in line]
    assert len(moved) == len(truncated), moved
    assert len(list(folder.glob("*.unreadable-*"))) == len(truncated)  # kept for a post-mortem


def test_simulated_cuda_out_of_memory_halves_the_micro_batch_and_finishes(run_spec, monkeypatch):
    real_step = train_module.TrainingRun.step

    def out_of_memory_above_two(run):
        if run.micro_batch > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_step(run)

    monkeypatch.setattr(train_module.TrainingRun, "step", out_of_memory_above_two)
    result = train_module.train(run_spec("a"))
    assert result["status"] == "ok" and math.isfinite(result["loss"])
    assert (result["micro_batch_size"], result["oom_halvings"]) == (2, 2)  # 8 -> 4 -> 2


def test_a_sigkilled_worker_resumes_its_run_from_the_checkpoint_through_the_cli(prepared_params, prepared_data,
                                                                                tmp_path):
    """A long run, its worker SIGKILLed mid-run: the retry resumes (the log says from which step) and ends
    with the loss of an uninterrupted run, bit for bit."""
    raw = small_study(Path(prepared_params.study.data.dir))  # the session's data: `prepare` finds it ready
    raw["study"].update(workers=2, store=str(tmp_path / "runs"))
    raw["study"]["train"].update(checkpoint_every_s=0.2, device="cpu")
    raw["scales"]["a"]["tokens"] = 16384 * 12  # 768 steps: several seconds on one thread
    raw["grid"] = {"lr": [1.0e-2]}
    raw["search"] = {**raw.get("search", {}), "noise_seeds": 0}  # the one run that is killed, no seed runs
    params = write_params(tmp_path / "params.yaml", raw)
    assert run_cli("prepare", "--params", str(params)).returncode == 0
    sweep = subprocess.Popen([OPTSWEEP, "sweep", "--params", str(params), "--scale", "a", "--out",
                              str(tmp_path / "a.json")], env=synth.cli_env(), stderr=subprocess.PIPE, text=True)
    progress = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and sweep.poll() is None:
        found = list((tmp_path / "runs" / "checkpoints").glob("*/progress.json"))
        if found and json.loads(found[0].read_text())["step"] >= 200:
            progress = json.loads(found[0].read_text())
            break
        time.sleep(0.1)
    assert progress is not None, "the run never checkpointed past step 200"
    workers = [p for p in psutil.Process(sweep.pid).children() if "resource_tracker" not in " ".join(p.cmdline())]
    busy = max(workers, key=lambda p: p.cpu_times().user)  # the one training
    busy.send_signal(signal.SIGKILL)
    _, stderr = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, stderr
    resumed_lines = [line for line in stderr.splitlines() if "resuming from the checkpoint at step" in line]
    assert resumed_lines, stderr
    step = int(resumed_lines[0].split("at step ")[1].split()[0])
    assert step >= progress["step"]
    (record,) = list(RunStore(tmp_path / "runs"))
    assert record.status == RunStatus.OK and record.result["resumed_from"] == [step] and record.attempts == 2
    assert not (tmp_path / "runs" / "checkpoints" / record.key).exists()  # deleted once stored
    spec = {**record.spec, "checkpoint_dir": None}
    assert train_module.train(spec)["loss"] == record.loss  # an uninterrupted run of the same spec


# --- the driver's death, failed runs, divergence ---------------------------------------------------------


def test_workers_exit_when_their_driver_is_sigkilled(tmp_path):
    params = synth.write_study(tmp_path, "sleeper", study_workers=2)
    sweep = subprocess.Popen([OPTSWEEP, "sweep", "--params", str(params), "--scale", "a", "--out",
                              str(tmp_path / "a.json")], env=synth.cli_env(SYNTH_SLEEP="30"),
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    workers: list[psutil.Process] = []
    while time.monotonic() < deadline and len(workers) < 2:
        workers = [p for p in psutil.Process(sweep.pid).children()
                   if "resource_tracker" not in " ".join(p.cmdline())]
        time.sleep(0.2)
    assert len(workers) == 2
    time.sleep(1.0)  # both are training now
    sweep.send_signal(signal.SIGKILL)
    sweep.wait(timeout=10)
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"orphaned workers: {[p.pid for p in alive]}"


def test_a_sweep_with_one_poisoned_worker_stores_every_run_ok(tmp_path):
    """One of three workers fails every run with a CUDA error: it is retired, and its runs are retried on the
    others, so the search misses no run."""
    params = synth.write_study(tmp_path, "poisoned", study_workers=3)
    result = run_cli("sweep", "--params", str(params), "--scale", "a", "--out", str(tmp_path / "a.json"),
                     env=synth.cli_env(SYNTH_POISON=str(tmp_path / "poison")))
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("retired: a device error (RuntimeError: CUDA error") == 1, result.stderr
    records = list(RunStore(tmp_path / "runs"))
    assert records and {record.status for record in records} == {RunStatus.OK}
    assert json.loads((tmp_path / "a.json").read_text())["failed"] == []


def test_a_failed_run_is_trained_again_to_ok_by_the_next_sweep(tmp_path):
    params = synth.write_study(tmp_path, "broken_while_marked", grid={"lr": [1e-3, 3e-3, 1e-2]})
    marker = tmp_path / "broken"
    marker.touch()
    env = synth.cli_env(SYNTH_BROKEN=str(marker))
    arguments = ["sweep", "--params", str(params), "--scale", "a", "--out", str(tmp_path / "a.json")]
    first = run_cli(*arguments, env=env)
    assert first.returncode == 1 and "run(s) failed" in first.stderr and "device fault" in first.stderr
    assert {r.status for r in RunStore(tmp_path / "runs")} == {RunStatus.FAILED}
    listed = run_cli("store", "list", "--status", "failed", "--params", str(params), env=env)
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 3 and "device fault" in listed.stdout
    marker.unlink()
    second = run_cli(*arguments, env=env)
    assert second.returncode == 0, second.stderr
    assert {r.status for r in RunStore(tmp_path / "runs")} == {RunStatus.OK}
    assert json.loads((tmp_path / "a.json").read_text())["failed"] == []


def test_store_retry_trains_failed_runs_now(tmp_path):
    params = synth.write_study(tmp_path, "broken_while_marked", grid={"lr": [1e-3, 3e-3]})
    marker = tmp_path / "broken"
    marker.touch()
    env = synth.cli_env(SYNTH_BROKEN=str(marker))
    run_cli("sweep", "--params", str(params), "--scale", "a", "--out", str(tmp_path / "a.json"), env=env)
    marker.unlink()
    retried = run_cli("store", "retry", "--params", str(params), env=env)
    assert retried.returncode == 0 and retried.stdout.count(": ok") == 2, retried.stdout + retried.stderr
    assert {r.status for r in RunStore(tmp_path / "runs")} == {RunStatus.OK}


def test_a_run_that_blows_up_to_a_finite_loss_stops_early_as_diverged(prepared_params_file):
    """lr 3 reached over a long warmup wrecks the model without a NaN: the rise rule stops it."""
    result = run_cli("train", "--params", str(prepared_params_file), "--scale", "a",
                     "--set", "lr=3.0", "--set", "warmup=40", "--set", "min_lr_ratio=1.0",
                     "--set", "study.train.diverge_above=100", "--set", "study.train.device=cpu",
                     "--set", "scales.b.tokens=16384",
                     "--set", "study.train.divergence={rise: 0.1, patience: 5, smoothing: 0.3}")
    assert result.returncode == 0, result.stderr
    run = json.loads(result.stdout)
    assert run["status"] == "diverged" and run["loss"] is None
    assert 40 <= run["diverged_at_step"] < 63 and run["steps"] < 64
    assert "rose above its best" in run["reason"]
    assert math.isfinite(run["train_curve"][-1][1])  # finite, yet blown up


# --- preflight -------------------------------------------------------------------------------------------


def test_a_device_that_cannot_compute_stops_the_sweep_before_any_run(tmp_path):
    params = synth.write_study(tmp_path, "bowl", study_workers=2, study_train={"device": "cuda"})
    result = run_cli("sweep", "--params", str(params), "--scale", "a", "--out", str(tmp_path / "a.json"),
                     env=synth.cli_env(CUDA_VISIBLE_DEVICES="0"))  # a GPU named, none usable here
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "study.train.device is 'cuda' but" in line and "before any run" in line
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*.json"))


# --- run identity ------------------------------------------------------------------------------------------


def _identity_in(lib: Path, trainer: str = "optsweep.train:train") -> str:
    code = f"from optsweep.runs.trainer import code_identity; print(code_identity({trainer!r}))"
    env = {**os.environ, "PYTHONPATH": str(lib)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          check=True).stdout.strip()


def test_comments_and_docstrings_do_not_move_the_run_identity_but_code_does(tmp_path):
    lib = tmp_path / "lib"
    shutil.copytree(REPO / "lib", lib, ignore=shutil.ignore_patterns("__pycache__"))
    original = _identity_in(lib)
    assert original == code_identity("optsweep.train:train")
    train_py = lib / "optsweep" / "train" / "loop.py"
    text = train_py.read_text()
    edited = text.replace('"""Train one run;', '"""Train exactly one run;', 1).replace(
        "SYNC_EVERY = 16  #", "SYNC_EVERY = 16  # (a reworded comment)  #", 1)
    train_py.write_text("# a new leading comment\n" + edited.replace("\n\n\ndef ", "\n\n\n\ndef "))
    assert train_py.read_text() != text and _identity_in(lib) == original
    prepare_py = lib / "optsweep" / "data" / "prepare.py"
    prepare_py.write_text(prepare_py.read_text() + "\nX = 1\n")
    assert _identity_in(lib) == original  # data preparation is covered by the data hash
    train_py.write_text(edited.replace("TRAINER_VERSION = ", "TRAINER_VERSION = 1 + ", 1))
    assert _identity_in(lib) != original


def test_a_comment_only_edit_of_a_user_trainer_retrains_nothing(tmp_path):
    module = tmp_path / "my_trainer.py"
    module.write_text('"""My trainer."""\n\n\ndef train(spec):\n    h = spec["hparams"]\n'
                      '    return {"loss": 3.0 + (h["lr"] - 3e-3) ** 2}\n')
    params = synth.write_study(tmp_path, "bowl", study_trainer="my_trainer:train", grid={"lr": [1e-3, 3e-3]})
    env = synth.cli_env(PYTHONPATH=f"{tmp_path}{os.pathsep}{synth.cli_env()['PYTHONPATH']}")
    arguments = ["sweep", "--params", str(params), "--scale", "a", "--out", str(tmp_path / "a.json")]
    assert run_cli(*arguments, env=env).returncode == 0
    module.write_text(module.read_text().replace('"""My trainer."""', '"""My trainer, documented."""  # hi'))
    assert run_cli(*arguments, env=env).returncode == 0
    assert json.loads((tmp_path / "a.json").read_text())["compute"]["runs_trained"] == 0
    module.write_text(module.read_text().replace("3.0 +", "3.1 +"))
    assert run_cli(*arguments, env=env).returncode == 0
    assert json.loads((tmp_path / "a.json").read_text())["compute"]["runs_trained"] == 2


def test_how_the_pool_treats_its_workers_does_not_move_the_run_spec(tmp_path):
    raw = small_study(tmp_path / "data")
    default = load_params(write_params(tmp_path / "default.yaml", raw))
    raw["study"]["train"].update(retire_after_fast_failures=7, stall_timeout_s=60)
    strict = load_params(write_params(tmp_path / "strict.yaml", raw))
    assert (strict.study.train.retire_after_fast_failures, strict.study.train.stall_timeout_s) == (7, 60)
    assert make_run_spec(strict, "a", strict.baseline, None) == make_run_spec(default, "a", default.baseline, None)


def test_store_why_names_the_part_of_the_identity_that_differs(tmp_path):
    params = synth.write_study(tmp_path, "bowl", grid={"lr": [1e-3, 3e-3]})
    run_cli("sweep", "--params", str(params), "--scale", "a", "--out", str(tmp_path / "a.json"))
    stored = run_cli("store", "why", "--params", str(params), "--scale", "a")
    assert stored.returncode == 0 and "stored as a result (ok)" in stored.stdout
    moved = run_cli("store", "why", "--params", str(params), "--scale", "a", "--set", "study.seed=7")
    assert moved.returncode == 0 and "not stored" in moved.stdout and "seed: 0 stored, 7 now" in moved.stdout


# --- noise seeds and bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(("varies", "init_moves", "order_moves"),
                         [("both", True, True), ("init", True, False), ("data_order", False, True)])
def test_noise_seeds_vary_the_initialisation_and_or_the_batch_order(tmp_path, monkeypatch, varies, init_moves,
                                                                    order_moves):
    params = synth.write_study(tmp_path, "bowl", grid={"lr": [1e-3, 3e-3]},
                               search={"noise_seeds": 1, "noise_candidates": 0, "noise_varies": varies})
    run_cli("sweep", "--params", str(params), "--scale", "a", "--out", str(tmp_path / "a.json"))
    specs = [r.spec for r in RunStore(tmp_path / "runs")]
    assert {s["seed"] != 0 for s in specs} == ({False, True} if init_moves else {False})
    assert {s["batch_seed"] != 0 for s in specs} == ({False, True} if order_moves else {False})


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda raw: raw["study"]["train"].update(checkpoint_every_s=-1),
         "study.train.checkpoint_every_s: Input should be greater than or equal to 0"),
        (lambda raw: raw["scales"]["a"].update(micro_batch_size=3),
         "scales.a.micro_batch_size: 3 does not divide the batch size 8 of scale 'a'"),
        (lambda raw: raw["study"]["train"].update(micro_batch_size=5),
         "study.train.micro_batch_size: 5 does not divide the batch size 8 of scale 'a'"),
        (lambda raw: raw["study"]["train"].update(divergence={"rise": 0}),
         "study.train.divergence.rise: Input should be greater than 0"),
        (lambda raw: raw["study"]["train"].update(divergence={"smoothing": 1.5}),
         "study.train.divergence.smoothing: Input should be less than or equal to 1"),
        (lambda raw: raw["study"]["train"].update(retire_after_fast_failures=0),
         "study.train.retire_after_fast_failures: Input should be greater than or equal to 1"),
        (lambda raw: raw["study"]["train"].update(stall_timeout_s=-1),
         "study.train.stall_timeout_s: Input should be greater than or equal to 0"),
    ],
)
def test_bad_survival_settings_fail_in_one_line(tmp_path, edit, message):
    raw = small_study(tmp_path / "data")
    edit(raw)
    path = write_params(tmp_path / "params.yaml", raw)
    with pytest.raises(ParamsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_params(path)
    result = run_cli("plan", "--params", str(path))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


def test_plan_prints_the_micro_batch_per_scale(tmp_path):
    raw = small_study(tmp_path / "data")
    raw["scales"]["a"]["micro_batch_size"] = 4
    result = run_cli("plan", "--params", str(write_params(tmp_path / "params.yaml", raw)))
    rows = {line.split()[2]: line.split() for line in result.stdout.splitlines() if line.startswith("adamw  ")}
    assert rows["a"][6] == "4" and rows["b"][6] == "8"
    assert yaml.safe_load((tmp_path / "params.yaml").read_text())["scales"]["a"]["micro_batch_size"] == 4
