"""The run store: keys, atomic strict-JSON records, unreadable files, many writer processes."""

from __future__ import annotations

import copy
import json
import logging
import subprocess
import sys
import textwrap

import pytest

import optsweep.testing.trainers as synth
from optsweep.params.settings import load_params
from optsweep.runs.store import RunRecord, RunStore, run_key
from optsweep.runs.trainer import make_run_spec
from optsweep.search import run_sweep

DATA = {"dir": "/data/prepared", "hash": "abc123", "vocab_size": 512, "tokenizer": "bpe"}


@pytest.fixture
def spec(tmp_path):
    params = load_params(synth.write_study(tmp_path, "bowl"))
    baseline, _ = params.scale_space("a")
    return make_run_spec(params, "a", baseline, DATA)


def record(key: str, spec: dict, loss: float | None = 3.0, **fields) -> RunRecord:
    return RunRecord(key=key, status="ok" if loss is not None else "diverged", loss=loss, spec=spec,
                     trainer="t:f", trainer_code="c0de", result={"loss": loss}, **fields)


def test_key_ignores_what_cannot_change_the_result(spec):
    key = run_key(spec, "t:f", "c0de")
    moved = copy.deepcopy(spec)
    moved["data"]["dir"] = "/elsewhere"
    moved["train"]["threads_per_worker"] = 8
    moved["scale"]["name"] = "renamed"
    assert run_key(moved, "t:f", "c0de") == key


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s["hparams"].update(lr=1e-2),
        lambda s: s.update(seed=1),
        lambda s: s["data"].update(hash="def456"),
        lambda s: s["scale"].update(tokens=16384),
        lambda s: s["train"].update(precision="bf16"),
    ],
)
def test_key_changes_with_what_can_change_the_result(spec, change):
    changed = copy.deepcopy(spec)
    change(changed)
    assert run_key(changed, "t:f", "c0de") != run_key(spec, "t:f", "c0de")


def test_key_changes_with_the_trainer_and_its_code(spec):
    keys = {run_key(spec, "t:f", "c0de"), run_key(spec, "t:g", "c0de"), run_key(spec, "t:f", "beef")}
    assert len(keys) == 3


def test_put_get_and_iterate_strict_json(tmp_path, spec):
    store = RunStore(tmp_path / "runs")
    assert store.get("k1") is None
    diverged = RunRecord(key="k2", status="diverged", loss=None, spec=spec, trainer="t:f", trainer_code="c0de",
                         result={"loss": float("nan"), "eval_curve": [[1, 5.0], [2, float("inf")]]})
    store.put("k1", record("k1", spec))
    store.put("k2", diverged)
    assert store.get("k1") == record("k1", spec, created=store.get("k1").created)
    assert store.get("k2").result == {"loss": None, "eval_curve": [[1, 5.0], [2, None]]}
    assert [r.key for r in store] == ["k1", "k2"]
    for path in (tmp_path / "runs").iterdir():
        json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    with pytest.raises(ValueError, match="does not match"):
        store.put("k3", record("k1", spec))


def test_unreadable_files_are_skipped_with_a_warning(tmp_path, spec, caplog):
    store = RunStore(tmp_path / "runs")
    store.put("good", record("good", spec))
    full = store.path("good").read_text()
    store.path("partial").write_text(full[: len(full) // 2])  # what a non-atomic writer leaves when killed
    store.path("alien").write_text(json.dumps({"key": "alien", "something": "else"}))
    with caplog.at_level(logging.WARNING, logger="optsweep.runs.store"):
        assert store.get("partial") is None and store.get("alien") is None
        assert [r.key for r in store] == ["good"]
    assert sum("ignoring unreadable" in message for message in caplog.messages) == 4


def test_a_sweep_retrains_a_run_whose_file_is_corrupt(tmp_path, monkeypatch, caplog):
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("SYNTH_CALLS", str(calls))
    params = load_params(synth.write_study(tmp_path, "bowl"))
    first = run_sweep(params, "a", tmp_path / "out.json", progress=False)
    victim = first["runs"][3]["key"]
    RunStore(tmp_path / "runs").path(victim).write_text('{"key": "')
    with caplog.at_level(logging.WARNING, logger="optsweep.runs.store"):
        second = run_sweep(params, "a", tmp_path / "out.json", progress=False)
    assert second["compute"]["runs_trained"] == 1
    assert second["runs"] == first["runs"]
    assert RunStore(tmp_path / "runs").get(victim).loss == first["runs"][3]["loss"]
    assert any(victim in message for message in caplog.messages)


def test_a_writer_dying_before_the_rename_leaves_the_old_record_whole(tmp_path, spec, monkeypatch):
    store = RunStore(tmp_path / "runs")
    store.put("k", record("k", spec, loss=3.0))

    def killed_before_rename(source, destination):
        raise KeyboardInterrupt  # a writer stopped between writing the temp file and moving it into place

    monkeypatch.setattr("os.replace", killed_before_rename)
    with pytest.raises(KeyboardInterrupt):
        store.put("k", record("k", spec, loss=2.0))
    monkeypatch.undo()
    assert store.get("k").loss == 3.0
    assert [path.name for path in (tmp_path / "runs").iterdir()] == ["k.json"]


WRITER = textwrap.dedent(
    """
    import sys
    from optsweep.runs.store import RunRecord, RunStore
    store, writer = RunStore(sys.argv[1]), int(sys.argv[2])
    for i in range(150):
        key = f"shared{(i // 2) % 30}" if i % 2 else f"w{writer}-{i}"
        spec = {"hparams": {"lr": i}, "padding": "x" * 20000, "writer": writer}
        store.put(key, RunRecord(key=key, status="ok", loss=float(i), spec=spec, trainer="t:f", trainer_code="c"))
    """
)


def test_many_writer_processes_never_corrupt_the_store(tmp_path):
    root = tmp_path / "runs"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(w)]) for w in range(4)]
    assert [writer.wait(timeout=120) for writer in writers] == [0, 0, 0, 0]
    files = sorted(root.iterdir())
    assert len(files) == 4 * 75 + 30 and all(path.suffix == ".json" for path in files)  # no temp files left
    records = list(RunStore(root))
    assert len(records) == len(files)  # every file parses as a whole record
    assert all(len(r.spec["padding"]) == 20000 for r in records)
