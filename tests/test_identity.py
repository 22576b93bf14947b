"""The run identity moves only with code that computes: comments, docstrings, layout, import lines and where a
module lives keep every key; one changed operator changes it; one optimizer's edit re-keys only its runs; and
`optsweep store rekey` carries a store keyed by an older rule over to the current one."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import optsweep.testing.trainers as synth
from optsweep.optimizers import BUILT_IN
from optsweep.params.settings import load_params
from optsweep.runs.store import RunRecord, RunStore, run_key
from optsweep.runs.trainer import code_identity
from optsweep.runs.view import rekey
from optsweep.search import run_sweep

REPO = Path(__file__).resolve().parents[1]
TRAINER_SOURCE = (REPO / "lib" / "optsweep" / "train" / "loop.py").read_text()  # a real module: imports, docstrings


def identity_of(folder: Path, module: str, source: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The code identity of a user trainer "module:train" whose module holds `source`, found in `folder`."""
    path = folder.joinpath(*module.split(".")).with_suffix(".py")
    path.parent.mkdir(parents=True, exist_ok=True)
    for package in path.relative_to(folder).parents:
        if package != Path("."):
            (folder / package / "__init__.py").touch()
    path.write_text(source)
    monkeypatch.syspath_prepend(str(folder))
    return code_identity(f"{module}:train")


@pytest.mark.parametrize("edit", [
    pytest.param(lambda s: "# a new leading comment\n" + s, id="a leading comment"),
    pytest.param(lambda s: s.replace("SYNC_EVERY = 16  #", "SYNC_EVERY = 16  # (reworded)  #", 1), id="a comment"),
    pytest.param(lambda s: s.replace('"""Train one run;', '"""Train exactly one run;', 1), id="a docstring"),
    pytest.param(lambda s: s.replace("\n\n\ndef ", "\n\n\n\ndef ").replace("(\n    ", "(    "), id="layout"),
    pytest.param(lambda s: s.replace("import math\n", "import math\nimport sys\nimport collections\n", 1),
                 id="added imports"),
    pytest.param(lambda s: s.replace("from __future__ import annotations\n", "", 1), id="no __future__"),
    pytest.param(lambda s: re.sub(r"from \.+", "from optsweep.", s), id="relative imports made absolute"),
])
def test_what_does_not_compute_keeps_the_identity(tmp_path, monkeypatch, edit):
    original = identity_of(tmp_path / "a", "my_trainer", TRAINER_SOURCE, monkeypatch)
    edited = edit(TRAINER_SOURCE)
    assert edited != TRAINER_SOURCE
    assert identity_of(tmp_path / "b", "my_trainer", edited, monkeypatch) == original


def test_reordered_import_lines_keep_the_identity(tmp_path, monkeypatch):
    lines = TRAINER_SOURCE.splitlines(keepends=True)
    imports = [i for i, line in enumerate(lines) if line.startswith(("import ", "from "))]
    first, last = imports[0], imports[-1]
    reordered = [*lines[:first], *reversed(lines[first:last + 1]), *lines[last + 1:]]
    original = identity_of(tmp_path / "a", "my_trainer", TRAINER_SOURCE, monkeypatch)
    assert identity_of(tmp_path / "b", "my_trainer", "".join(reordered), monkeypatch) == original


def test_moving_a_trainer_module_into_a_package_under_another_name_keeps_the_identity(tmp_path, monkeypatch):
    original = identity_of(tmp_path / "flat", "my_trainer", TRAINER_SOURCE, monkeypatch)
    moved = TRAINER_SOURCE.replace("from .", "from ..")  # one level deeper, its relative imports move too
    assert identity_of(tmp_path / "deep", "lab.training.loop", moved, monkeypatch) == original


@pytest.mark.parametrize("edit", [
    pytest.param(lambda s: s.replace("TRAINER_VERSION = ", "TRAINER_VERSION = 1 + ", 1), id="a constant"),
    pytest.param(lambda s: s.replace("(len(micro) / len(batch))", "(len(micro) * len(batch))", 1), id="one operator"),
])
def test_a_change_of_code_changes_the_identity(tmp_path, monkeypatch, edit):
    original = identity_of(tmp_path / "a", "my_trainer", TRAINER_SOURCE, monkeypatch)
    assert identity_of(tmp_path / "b", "my_trainer", edit(TRAINER_SOURCE), monkeypatch) != original


# --- one optimizer's code re-keys only its own runs ------------------------------------------------------

IDENTITIES = """
import json
from optsweep.optimizers import BUILT_IN, optimizer_identity
from optsweep.runs.trainer import code_identity
print(json.dumps({"trainer": code_identity("optsweep.train:train"),
                  **{name: optimizer_identity(name)["code"] for name in BUILT_IN}}))
"""


def identities_in(lib: Path) -> dict[str, str]:
    """The default trainer's code identity and every built-in optimizer's, as the library copy `lib` says."""
    env = {**os.environ, "PYTHONPATH": str(lib)}
    output = subprocess.run([sys.executable, "-c", IDENTITIES], capture_output=True, text=True, env=env, check=True)
    return json.loads(output.stdout)


@pytest.fixture
def lib_copy(tmp_path) -> Path:
    lib = tmp_path / "lib"
    shutil.copytree(REPO / "lib", lib, ignore=shutil.ignore_patterns("__pycache__"))
    return lib


def test_editing_one_optimizer_changes_only_its_identity_and_adding_one_none(lib_copy):
    original = identities_in(lib_copy)
    assert set(original) == {"trainer", *BUILT_IN} and "lion" in BUILT_IN
    assert len(set(original.values())) == len(original)  # each optimizer's code is its own
    package = lib_copy / "optsweep" / "optimizers"
    lion = package / "lion.py"
    source = lion.read_text()
    lion.write_text(source + "\n# a comment at the end of Lion's file\n")
    assert identities_in(lib_copy) == original

    (package / "lion_twin.py").write_text(source.replace('name="lion"', 'name="lion_twin"'))
    with_twin = identities_in(lib_copy)
    assert with_twin.pop("lion_twin") and with_twin == original  # a new optimizer re-keys no other one

    assert "weight_decouple=True" in source
    lion.write_text(source.replace("weight_decouple=True", "weight_decouple=False"))
    edited = identities_in(lib_copy)
    del edited["lion_twin"]
    assert edited["lion"] != original["lion"]
    assert {k: v for k, v in edited.items() if k != "lion"} == {k: v for k, v in original.items() if k != "lion"}


def test_editing_the_shared_base_changes_every_optimizer_and_the_trainer(lib_copy):
    original = identities_in(lib_copy)
    base = lib_copy / "optsweep" / "optimizers" / "base.py"
    base.write_text(base.read_text().replace("fused: bool = False", "fused: bool = True", 1))
    edited = identities_in(lib_copy)
    assert all(edited[name] != original[name] for name in original)


# --- optsweep store rekey ---------------------------------------------------------------------------------


def with_old_rule_keys(store: RunStore) -> list[str]:
    """Re-key every record as an older identity rule would have (other code hashes); returns the old keys."""
    keys = []
    for record in list(store):
        spec = {**record.spec, "optimizer": {**record.spec["optimizer"], "code": "0ld0ptimizerc0de"}}
        key = run_key(spec, record.trainer, "0ldtrainerc0de00")
        store.put(key, dataclasses.replace(record, key=key, spec=spec, trainer_code="0ldtrainerc0de00"))
        store.delete(record.key)
        keys.append(key)
    return keys


@pytest.fixture
def swept(tmp_path, monkeypatch) -> tuple[Path, Path, dict]:
    """A sweep of the bowl surface whose store then holds its runs under old-rule keys (and one failed run)."""
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("SYNTH_CALLS", str(calls))
    params = synth.write_study(tmp_path, "bowl")
    first = run_sweep(load_params(params), "a", tmp_path / "out.json", progress=False)
    store = RunStore(tmp_path / "runs")
    with_old_rule_keys(store)
    failed = next(iter(store))
    store.put("f" * 24, dataclasses.replace(failed, key="f" * 24, status="failed", loss=None, error="boom"))
    calls.unlink()
    return params, calls, first


def rekey_cli(params: Path, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([synth.OPTSWEEP, "store", "rekey", "--params", str(params), *arguments],
                          capture_output=True, text=True, timeout=300, env=synth.cli_env())


def test_rekey_lets_a_sweep_find_every_run_of_an_old_rule_store_without_training(swept, tmp_path):
    params, calls, first = swept
    runs = len(first["runs"])
    store = RunStore(tmp_path / "runs")
    before = sorted(path.name for path in store.root.glob("*.json"))

    dry = rekey_cli(params, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[-1] == f"would move {runs}, unchanged 0, skipped 1"
    assert sorted(path.name for path in store.root.glob("*.json")) == before

    moved = rekey_cli(params)
    assert moved.returncode == 0, moved.stderr
    assert moved.stdout.splitlines()[-1] == f"moved {runs}, unchanged 0, skipped 1"
    assert f"{'f' * 24}: skipped, failed" in moved.stdout
    again = rekey_cli(params)
    assert again.stdout.splitlines()[-1] == f"moved 0, unchanged {runs}, skipped 1"

    second = run_sweep(load_params(params), "a", tmp_path / "out.json", progress=False)
    assert synth.read_calls(calls) == [] and second["compute"]["runs_trained"] == 0
    assert [run["key"] for run in second["runs"]] == [run["key"] for run in first["runs"]]
    assert [run["loss"] for run in second["runs"]] == [run["loss"] for run in first["runs"]]


def test_a_rekey_killed_between_write_and_remove_loses_nothing_and_finishes_next_time(swept, tmp_path,
                                                                                       monkeypatch):
    params, _, first = swept
    store = RunStore(tmp_path / "runs")
    results = sorted(record.key for record in store if record.is_result)

    def killed(self: RunStore, key: str) -> None:
        raise KeyboardInterrupt  # the process dies after writing the new record, before removing the old

    with monkeypatch.context() as patch:
        patch.setattr(RunStore, "delete", killed)
        with pytest.raises(KeyboardInterrupt):
            rekey(store)
    assert sorted(record.key for record in store if record.is_result) != results  # one more: a duplicate
    finished = rekey(store)
    assert len(finished.moved) == len(results) and len(finished.unchanged) == 1  # the one written before the kill
    current = {record.key for record in store if record.is_result}
    assert current == {run["key"] for run in first["runs"]} and len(current) == len(results)


def test_rekey_without_a_store_is_one_error_line(tmp_path):
    params = synth.write_study(tmp_path, "bowl")  # its store folder was never made
    result = rekey_cli(params)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("optsweep: error: optsweep store rekey: no run store at")


def test_rekeyed_records_carry_the_current_code_identity(swept, tmp_path):
    params, _, _ = swept
    store = RunStore(tmp_path / "runs")
    rekey(store)
    trainer_code = code_identity("optsweep.testing.trainers:bowl")
    records: list[RunRecord] = [record for record in store if record.is_result]
    assert records and all(record.trainer_code == trainer_code for record in records)
    assert all(record.spec["optimizer"]["code"] != "0ld0ptimizerc0de" for record in records)


def test_store_why_names_the_old_code_hashes_before_a_rekey(swept):
    params, _, _ = swept
    why = subprocess.run([synth.OPTSWEEP, "store", "why", "--params", str(params), "--scale", "a"],
                         capture_output=True, text=True, timeout=300, env=synth.cli_env())
    assert why.returncode == 0, why.stderr
    assert "trainer_code: '0ldtrainerc0de00' stored" in why.stdout
    assert "optimizer.code: '0ld0ptimizerc0de' stored" in why.stdout
