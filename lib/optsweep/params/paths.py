"""Where the study's files live: the project root, and every params, results and report path under it.

The project root is the folder holding `dvc.yaml` or `params/study.yaml`, found upward from the current
directory (a JupyterLab kernel starts in notebooks/, a DVC stage in the root), or named by the environment
variable OPTSWEEP_ROOT. Every path here is absolute, so notebooks, the CLI and `optsweep.results` work
whatever their working directory. Relative paths inside a params file (the run store, the data folder)
mean relative to the root, as in dvc.yaml's commands: `enter_root()` makes the root the working directory
before a notebook trains or prepares anything.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Literal

from .settings import ParamsError

ROOT_VARIABLE = "OPTSWEEP_ROOT"
PARAMS_FILE = Path("params/study.yaml")  # the active params, relative to the root
MARKERS = ("dvc.yaml", str(PARAMS_FILE))  # either one marks a project root

Phase = Literal["phase1", "law"]
PHASES: tuple[Phase, ...] = ("phase1", "law")
SWEEP_FOLDERS: dict[Phase, str] = {"phase1": "sweeps", "law": "law_sweeps"}


def find_root(start: Path | None = None) -> Path:
    """$OPTSWEEP_ROOT if set, else the nearest folder at or above `start` (default: the current directory)
    holding one of MARKERS."""
    if os.environ.get(ROOT_VARIABLE):
        root = Path(os.environ[ROOT_VARIABLE]).expanduser().resolve()
        if not root.is_dir():
            raise ParamsError(f"{ROOT_VARIABLE}={root}: not a folder; point it at the project root")
        return root
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if any((folder / marker).is_file() for marker in MARKERS):
            return folder
    raise ParamsError(
        f"no project root at or above {here}: no {' or '.join(MARKERS)}; run from the project or set {ROOT_VARIABLE}"
    )


@dataclasses.dataclass(frozen=True)
class ProjectPaths:
    """Every path of one study, under its root (the layout dvc.yaml's stages write).

    The study's own optimizer (AdamW) writes under results/ and reports/; another optimizer of the
    comparison (params `optimizers.<name>`) the same files under results/optimizers/<name>/ and
    reports/optimizers/<name>/: `paths.of_optimizer(name)`. The metrics, the speedup and the report are
    the whole study's."""

    root: Path
    optimizer: str | None = None  # None: the study's own optimizer

    @property
    def params(self) -> Path:
        """The active params file (a copy of a preset)."""
        return self.root / PARAMS_FILE

    @property
    def presets(self) -> Path:
        return self.root / "params" / "presets"

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"

    @property
    def executed_notebooks(self) -> Path:
        """Executed copies of the stage notebooks (they change on every run: no stage depends on them)."""
        return self.root / "build" / "notebooks"

    def of_optimizer(self, name: str | None) -> ProjectPaths:
        """The paths of another optimizer's study (None: the study's own)."""
        return dataclasses.replace(self, optimizer=name)

    def _own(self, folder: Path) -> Path:
        """`folder` for the study's own optimizer, `folder/optimizers/<name>` for another one."""
        return folder if self.optimizer is None else folder / "optimizers" / self.optimizer

    @property
    def results(self) -> Path:
        return self._own(self.root / "results")

    @property
    def sensitivity(self) -> Path:
        return self.results / "sensitivity.json"

    @property
    def scaling_law(self) -> Path:
        return self.results / "scaling_law.json"

    @property
    def metrics(self) -> Path:
        """The study's headline numbers for `dvc metrics show` / `dvc metrics diff`."""
        return self.root / "results" / "metrics.json"

    @property
    def speedup(self) -> Path:
        """Every other optimizer's speedup over the tuned AdamW (optsweep.analysis.speedup)."""
        return self.root / "results" / "speedup.json"

    @property
    def reports(self) -> Path:
        return self._own(self.root / "reports")

    @property
    def report(self) -> Path:
        return self.root / "reports" / "index.html"

    def sweeps(self, phase: Phase = "phase1") -> Path:
        """The folder of one phase's sweep results: results/sweeps/ or results/law_sweeps/."""
        if phase not in SWEEP_FOLDERS:
            raise ParamsError(f"phase {phase!r}: allowed: {', '.join(PHASES)}")
        return self.results / SWEEP_FOLDERS[phase]

    def sweep(self, scale: str, phase: Phase = "phase1") -> Path:
        return self.sweeps(phase) / f"{scale}.json"

    def sweep_report(self, scale: str, phase: Phase = "phase1") -> Path:
        return self.reports / SWEEP_FOLDERS[phase] / f"{scale}.html"

    def under_root(self, path: str | Path) -> Path:
        """A path from a params file (`study.store`, `study.data.dir`): relative ones are relative to the root."""
        return self.root / path


def project(start: Path | None = None) -> ProjectPaths:
    """The paths of the study whose root is at or above `start` (see `find_root`)."""
    return ProjectPaths(find_root(start))


def enter_root(start: Path | None = None) -> ProjectPaths:
    """Make the project root the working directory (so the params' relative paths mean what the pipeline
    means by them) and return its paths. A notebook opened in JupyterLab calls this first."""
    paths = project(start)
    os.chdir(paths.root)
    return paths
