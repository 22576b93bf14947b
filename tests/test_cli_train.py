"""`optsweep train`: a result on good input; on bad input one line naming the key, exit 2, nothing prepared."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import small_study, write_params
from optsweep.cli import main


def test_train_prints_the_result(prepared_params_file):
    done = subprocess.run(
        [str(Path(sys.executable).parent / "optsweep"), "train", "--params", str(prepared_params_file),
         "--scale", "b", "--set", "lr=3e-3", "--set", "study.seed=2"],
        capture_output=True, text=True, check=True, timeout=300,
    )
    result = json.loads(done.stdout)
    assert result["status"] == "ok" and result["steps"] == 32 and result["provenance"]["seed"] == 2


BAD_SETS = {
    "lr": (["lr=0"], r"baseline: optimizer 'adamw', lr: 0 is outside \(0, inf\)"),
    "negative lr": (["lr=-1e-3"], r"baseline: optimizer 'adamw', lr: -0.001 is outside"),
    "beta1": (["beta1=1"], r"baseline: optimizer 'adamw', beta1: 1 is outside \[0, 1\)"),
    "beta2": (["beta2=-0.1"], r"baseline: optimizer 'adamw', beta2: -0.1 is outside \[0, 1\)"),
    "eps": (["eps=0"], r"baseline: optimizer 'adamw', eps: 0 is outside \(0, inf\)"),
    "weight decay": (["weight_decay=-0.1"], r"baseline: optimizer 'adamw', weight_decay: -0.1 is outside"),
    "clip": (["clip=-1"], r"baseline: optimizer 'adamw', clip: -1 is outside"),
    "min lr ratio": (["min_lr_ratio=1.5"], r"baseline: optimizer 'adamw', min_lr_ratio: 1.5 is outside \[0, 1\]"),
    "warmup": (["warmup=64"], r"baseline\.warmup \(64\) must be shorter than the 64 steps of scale 'a'"),
    "heads": (["scales.a.heads=3"], r"scales\.a: width \(32\) must be divisible by heads \(3\)"),
    "zero tokens": (["scales.b.tokens=0"], r"scales\.b\.tokens: .*greater than 0"),
    "zero train tokens": (["study.data.train_tokens=0"], r"study\.data\.train_tokens"),
    "unknown key": (["study.data.colour=blue"], r"study\.data: unknown key 'colour'; allowed: source"),
    "unknown hparam": (["momentum=0.9"], r"baseline: optimizer 'adamw' has no hyperparameter 'momentum'; it has: lr,"),
    "trainer": (["study.trainer=no_such_module:train"], r"study\.trainer: cannot import module 'no_such_module'"),
    "corpus": (["study.data.source=files", "study.data.paths=[/no/such/dir/*.txt]"],
               r"study\.data\.paths: '/no/such/dir/\*\.txt' matches no file"),
}


@pytest.mark.parametrize("sets, message", BAD_SETS.values(), ids=BAD_SETS.keys())
def test_bad_input_fails_in_one_line_before_any_data(fresh_params_file, tmp_path, capsys, sets, message):
    params = fresh_params_file()
    argv = ["train", "--params", str(params), "--scale", "a"]
    for assignment in sets:
        argv += ["--set", assignment]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("optsweep: error: ")
    assert re.search(message, error), error
    assert not (tmp_path / "data").exists()


def test_unknown_scale(fresh_params_file, tmp_path, capsys):
    assert main(["train", "--params", str(fresh_params_file()), "--scale", "nope"]) == 2
    assert capsys.readouterr().err == "optsweep: error: unknown scale 'nope'; allowed: a, b\n"
    assert not (tmp_path / "data").exists()


def test_unknown_key_in_the_file(fresh_params_file, tmp_path, capsys):
    raw = small_study(tmp_path / "data")
    raw["baseline"]["momentum"] = 0.9
    assert main(["train", "--params", str(write_params(tmp_path / "p.yaml", raw)), "--scale", "a"]) == 2
    error = capsys.readouterr().err
    assert "baseline: optimizer 'adamw' has no hyperparameter 'momentum'; it has: lr," in error
    assert error.count("\n") == 1
    assert not (tmp_path / "data").exists()
