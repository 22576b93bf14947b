"""Shared fixtures: a small study whose data is prepared once per test session from the stdlib corpus."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from optsweep.params.settings import StudyParams, load_params

# Two scales small enough to train in well under a second each on one CPU thread.
SMALL_STUDY: dict[str, Any] = {
    "study": {
        "name": "test",
        "data": {"source": "stdlib", "train_tokens": 120_000, "val_tokens": 4096},
        "tokenizer": {"kind": "train", "vocab_size": 512, "train_chars": 600_000},
        "train": {"eval_points": 2},
    },
    "scales": {
        "a": {"width": 32, "depth": 1, "heads": 2, "seq_len": 32, "batch_size": 8, "tokens": 16384},
        "b": {"width": 64, "depth": 2, "heads": 4, "seq_len": 32, "batch_size": 8, "tokens": 8192},
    },
    "baseline": {"lr": 1.0e-2, "min_lr_ratio": 0.0, "warmup": 4, "beta1": 0.9, "beta2": 0.95,
                 "weight_decay": 0.1, "eps": 1.0e-8, "clip": 1.0},
    "grid": {"lr": [3.0e-3, 1.0e-2]},
}


def small_study(data_dir: Path) -> dict[str, Any]:
    """A fresh copy of the small study with its prepared data in `data_dir`."""
    study = copy.deepcopy(SMALL_STUDY)
    study["study"]["data"]["dir"] = str(data_dir)
    return study


def write_params(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def prepared_params_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("prepared")
    return write_params(folder / "params.yaml", small_study(folder / "data"))


@pytest.fixture(scope="session")
def prepared_params(prepared_params_file: Path) -> StudyParams:
    return load_params(prepared_params_file)


@pytest.fixture(scope="session")
def prepared_data(prepared_params: StudyParams) -> dict[str, Any]:
    """The data identity of the session's prepared shards (built once, ~5 s)."""
    from optsweep.data.prepare import ensure_prepared

    return ensure_prepared(prepared_params)


@pytest.fixture
def fresh_params_file(tmp_path: Path) -> Callable[..., Path]:
    """Writes the small study to tmp_path with a data dir (tmp_path/data) that does not exist yet."""

    def make(raw: dict[str, Any] | None = None) -> Path:
        return write_params(tmp_path / "params.yaml", raw or small_study(tmp_path / "data"))

    return make


@pytest.fixture(scope="session")
def run_spec(prepared_params: StudyParams, prepared_data: dict[str, Any]) -> Callable[..., dict[str, Any]]:
    """spec(scale="a", seed=None, train={...}, **hparams): a run spec on the session's prepared data."""
    from optsweep.runs.trainer import make_run_spec

    def make(
        scale: str = "a", seed: int | None = None, train: dict[str, Any] | None = None, **hparams: Any
    ) -> dict[str, Any]:
        baseline, _ = prepared_params.scale_space(scale)
        spec = make_run_spec(prepared_params, scale, {**baseline, **hparams}, prepared_data, seed=seed)
        spec["train"].update(train or {})
        return spec

    return make
