"""Presets: every shipped preset validates, the paper plan prints, bad presets fail in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from optsweep.config import load_params

REPO = Path(__file__).resolve().parents[1]
OPTSWEEP = str(Path(sys.executable).parent / "optsweep")
PRESETS = sorted((REPO / "params/presets").glob("*.yaml"))


def _optsweep(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([OPTSWEEP, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_shipped_presets_validate(preset: Path):
    params = load_params(preset)
    assert len(params.scales) >= 2 and (params.law_scales or params.optimizers)
    for name in params.optimizers:
        assert params.for_optimizer(name).scales == params.scales


def test_optimizers_preset_can_fit_adamws_loss_against_data_at_two_model_sizes():
    params = load_params(REPO / "params/presets/optimizers.yaml")
    assert params.study.optimizer == "adamw" and set(params.optimizers) == {"muon", "lion"}
    data_scales: dict[int, set[int]] = {}
    for scale in params.scales.values():
        data_scales.setdefault(scale.n_params, set()).add(scale.tokens)
    assert len(data_scales) == 2 and all(len(tokens) >= 3 for tokens in data_scales.values())


def test_tiny_phase1_scales_are_shaped_like_the_brief():
    params = load_params(REPO / "params/presets/tiny.yaml")
    (n1, d1), (n2, d2), (n3, d3) = [(s.n_params, s.tokens) for s in params.scales.values()]
    assert n1 == n2 and d2 == 5 * d1
    assert d3 == d1 and 4 <= n3 / n1 <= 7
    law_n = [s.n_params for s in params.law_scales.values()]
    law_d = [s.tokens for s in params.law_scales.values()]
    all_n = law_n + [n1, n3]
    assert max(all_n) / min(all_n) >= 4 and max(law_d) / min(law_d) >= 4


def test_paper_plan_prints_runs_tokens_and_gpu_hours():
    done = _optsweep("plan", "--params", "params/presets/paper.yaml")
    assert done.returncode == 0, done.stderr
    for scale in ("w512_10b", "w512_50b", "w1024_10b"):
        assert scale in done.stdout
    assert "GPU-hours" in done.stdout and "runs" in done.stdout


def _broken_preset(tmp_path: Path, edit) -> Path:
    raw = yaml.safe_load((REPO / "params/presets/micro.yaml").read_text())
    edit(raw)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda raw: raw["law_scales"]["l1"].pop("heads"), "law_scales.l1.heads: missing required key"),
        (lambda raw: raw.update(scales={}), "scales: needs at least 1 phase-1 scale"),
        (lambda raw: raw["scales"]["a"].update(widht=64), "unknown key 'widht'"),
    ],
    ids=["law-scale-missing-key", "no-phase1-scale", "misspelt-key"],
)
def test_bad_preset_fails_in_one_line_before_any_stage(tmp_path: Path, edit, expected: str):
    path = _broken_preset(tmp_path, edit)
    done = _optsweep("plan", "--params", str(path))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and expected in done.stderr and str(path) in done.stderr


def test_preset_command_switches_the_active_params(tmp_path: Path):
    (tmp_path / "params/presets").mkdir(parents=True)
    for preset in PRESETS:
        (tmp_path / "params/presets" / preset.name).write_text(preset.read_text())
    done = _optsweep("preset", "micro", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "params/study.yaml").read_text() == (REPO / "params/presets/micro.yaml").read_text()
    missing = _optsweep("preset", "nope", cwd=tmp_path)
    assert missing.returncode == 2 and "available: micro, optimizers, paper, tiny" in missing.stderr


def _stage_params(node) -> set[str]:
    """Every params key dvc.yaml's stages depend on (interpolated ones, like optimizers.${key}, left out)."""
    if isinstance(node, dict):
        found = set()
        for key, value in node.items():
            if key == "params":
                for entry in value:
                    for keys in (entry.values() if isinstance(entry, dict) else [[entry]]):
                        found.update(k for k in keys if "${" not in k)
            else:
                found |= _stage_params(value)
        return found
    return set().union(*(_stage_params(item) for item in node)) if isinstance(node, list) else set()


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_preset_has_every_params_key_the_pipeline_reads(preset: Path):
    raw = yaml.safe_load(preset.read_text())
    for dotted in sorted(_stage_params(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])):
        node = raw
        for part in dotted.split("."):
            assert isinstance(node, dict) and part in node, f"{preset.name}: no {dotted} (dvc.yaml reads it)"
            node = node[part]


def _planned_runs(*arguments: str) -> dict[tuple[str, str], tuple[int, int]]:
    done = _optsweep("plan", "--params", "params/presets/micro.yaml", *arguments)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith(("adamw ", "lion "))]
    return {(row[0], row[2]): tuple(int(n) for n in row[7].split("/")) for row in rows}


def test_plan_counts_the_seed_runs_that_measure_the_noise():
    seeds = _planned_runs("--set", "search.noise_seeds=2", "--set", "search.noise_candidates=2")
    without = _planned_runs("--set", "search.noise_seeds=0")
    assert seeds.keys() == without.keys() and len(seeds) == 10
    # the best and its two closest competitors on two more seeds: six runs per scale, first pass or last;
    # lion's micro grid holds a single value besides its baseline, so it has one competitor to replicate
    added = {row: (seeds[row][0] - without[row][0], seeds[row][1] - without[row][1]) for row in seeds}
    assert added == {row: (6, 6) if row[0] == "adamw" else (4, 4) for row in seeds}
