"""Several drivers on one run store: each run is claimed before it is trained, so none is trained twice."""

from __future__ import annotations

import collections
import json
import socket
import subprocess
import time

import optsweep.testing.trainers as synth
from optsweep.runs.store import RunClaims, RunStatus, RunStore


def test_two_drivers_on_one_store_train_each_config_once_and_agree(tmp_path):
    params = synth.write_study(tmp_path, "sleeper", study_workers=2)
    calls = tmp_path / "calls.txt"
    env = synth.cli_env(SYNTH_CALLS=str(calls), SYNTH_SLEEP="0.2")
    drivers = [subprocess.Popen([synth.OPTSWEEP, "sweep", "--params", str(params), "--scale", "a", "--out",
                                 str(tmp_path / f"a{i}.json")], env=env, stderr=subprocess.PIPE, text=True)
               for i in range(2)]
    for driver in drivers:
        _, stderr = driver.communicate(timeout=300)
        assert driver.returncode == 0, stderr
    counts = collections.Counter(synth.read_calls(calls))
    assert counts and max(counts.values()) == 1  # no config trained twice
    first, second = (json.loads((tmp_path / f"a{i}.json").read_text()) for i in range(2))
    assert first["best"] == second["best"] and first["best_loss"] == second["best_loss"]
    trained = first["compute"]["runs_trained"] + second["compute"]["runs_trained"]
    assert trained == len(counts)  # the work was shared, not duplicated
    assert not list((tmp_path / "runs" / "claims").glob("*.json"))  # every claim released


def test_a_stale_claim_of_a_dead_driver_is_taken_over(tmp_path):
    params = synth.write_study(tmp_path, "bowl", grid={"lr": [1e-3, 3e-3]})
    store = RunStore(tmp_path / "runs")
    dead = subprocess.Popen(["true"])
    dead.wait()
    claims = RunClaims(store)
    claims.folder.mkdir(parents=True)
    first = subprocess.run([synth.OPTSWEEP, "store", "why", "--params", str(params), "--scale", "a"],
                           capture_output=True, text=True, env=synth.cli_env())
    key = first.stdout.split(":")[0]
    stale = {"owner": "elsewhere", "host": socket.gethostname(), "pid": dead.pid, "heartbeat": time.time()}
    (claims.folder / f"{key}.json").write_text(json.dumps(stale))
    result = subprocess.run([synth.OPTSWEEP, "sweep", "--params", str(params), "--scale", "a", "--out",
                             str(tmp_path / "a.json")], capture_output=True, text=True, env=synth.cli_env(),
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "taking over the stale claim of elsewhere" in result.stderr
    assert store.get(key).status == RunStatus.OK


def test_a_live_claim_is_respected_and_a_fresh_heartbeat_keeps_it(tmp_path):
    store = RunStore(tmp_path / "runs")
    holder, other = RunClaims(store), RunClaims(store)
    assert holder.acquire("k1") and not other.acquire("k1")
    holder.refresh()
    assert not other.acquire("k1")
    holder.release("k1")
    assert other.acquire("k1") and not holder.acquire("k1")
