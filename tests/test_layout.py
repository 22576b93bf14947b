"""The library's layout holds: layers import only downward (import-linter's contract in pyproject.toml), no
module grows past what a newcomer reads in one sitting, and the concepts keep their own subpackages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIBRARY = REPO / "lib" / "optsweep"
MAX_MODULE_LINES = 450
MIN_SUBPACKAGES = 8


def test_the_layers_import_only_downward():
    env = {**os.environ, "PYTHONPATH": str(REPO / "lib")}
    linted = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--config", "pyproject.toml"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert linted.returncode == 0, linted.stdout[-3000:] + linted.stderr[-2000:]
    assert "0 broken" in linted.stdout


def test_no_library_module_is_longer_than_a_sitting():
    lengths = {path.relative_to(LIBRARY).as_posix(): len(path.read_text().splitlines())
               for path in LIBRARY.rglob("*.py")}
    assert {name: n for name, n in lengths.items() if n > MAX_MODULE_LINES} == {}


def test_each_concept_has_its_subpackage():
    subpackages = [path.parent.name for path in LIBRARY.glob("*/__init__.py")]
    assert len(subpackages) >= MIN_SUBPACKAGES, subpackages
