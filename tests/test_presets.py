"""Presets: every shipped preset validates, the paper plan prints, bad presets fail in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from optsweep.params.settings import load_params
from optsweep.search.plan import chain_hours, planned_runs, scale_plans, search_chain, search_variants, study_calendar

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
    assert missing.returncode == 2 and f"available: {', '.join(p.stem for p in PRESETS)}" in missing.stderr


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
    runs_table = done.stdout.split("\nat most ")[0]  # the calendar's rows below start with an optimizer too
    rows = [line.split() for line in runs_table.splitlines() if line.startswith(("adamw ", "lion "))]
    return {(row[0], row[2]): tuple(int(n) for n in row[7].split("/")) for row in rows}


def test_plan_counts_the_seed_runs_that_measure_the_noise():
    seeds = _planned_runs("--set", "search.noise_seeds=2", "--set", "search.noise_candidates=2")
    without = _planned_runs("--set", "search.noise_seeds=0")
    assert seeds.keys() == without.keys() and len(seeds) == 10
    # the best and its two closest competitors on two more seeds: six runs per scale, first pass or last;
    # lion's micro grid holds a single value besides its baseline, so it has one competitor to replicate
    added = {row: (seeds[row][0] - without[row][0], seeds[row][1] - without[row][1]) for row in seeds}
    assert added == {row: (6, 6) if row[0] == "adamw" else (4, 4) for row in seeds}


# --- the calendar ---------------------------------------------------------------------------------------------

PAPER = REPO / "params/presets/paper.yaml"


def _calendar_days(*arguments: str, preset: str = "params/presets/paper.yaml") -> dict[tuple[str, str], float]:
    """(phase or 'total', search) -> days, from the calendar table of `optsweep plan`."""
    done = _optsweep("plan", "--params", preset, *arguments)
    assert done.returncode == 0, done.stderr
    table = done.stdout.split("\ncalendar on ")[1].split("\n\n")[0].splitlines()[3:]
    days = {}
    for line in table:
        phase = "total" if line.startswith("total ") else line.split()[1]
        search, _, limited = line[19:].partition("  ")
        days[(phase, search.strip())] = float(limited.split()[1])
    return days


@pytest.mark.parametrize("speculate", [0, 2])
@pytest.mark.parametrize("gpus", [1, 3, 8, 64, 1000])
def test_calendar_is_never_shorter_than_gpu_hours_over_the_gpus(gpus: int, speculate: int):
    params = load_params(PAPER, [f"search.speculate={speculate}"])
    rows = study_calendar(scale_plans(params), params.search, gpus)
    assert len(rows) == 3 * len(search_variants(params.search, gpus))  # two phases and the total
    for row in rows:
        assert row.hours >= row.gpu_hours / gpus * (1 - 1e-12), row


def test_doubling_gpus_beyond_the_widest_line_does_not_shorten_the_critical_path():
    params = load_params(PAPER)
    for plan in scale_plans(params):
        for variant in search_variants(params.search, 64):
            chain = search_chain(plan, variant, 64)
            widest = max(chain.steps)
            hours = chain_hours(plan, chain, widest)
            assert hours == chain_hours(plan, chain, 2 * widest) == len(chain.steps) * plan.run_gpu_hours
            assert chain_hours(plan, chain, max(1, widest - 1)) > hours or widest == 1
    # through the command: at 64 GPUs the paper's chains already set the calendar, so 128 change nothing
    assert _calendar_days("--gpus", "64") == _calendar_days("--gpus", "128")
    configured = ("total", "configured (stop_rule pass, speculate 0)")
    assert _calendar_days("--gpus", "2")[configured] > _calendar_days("--gpus", "8")[configured]  # below the width


def test_the_calendar_plans_the_runs_the_run_counts_count():
    params = load_params(PAPER)
    configured, neighbourhood = search_variants(params.search, 8)[:2]
    for plan in scale_plans(params):
        free = params.search_order()
        most = planned_runs(params, plan.scale, free)[1]
        assert sum(search_chain(plan, configured, 8).steps) == sum(search_chain(plan, neighbourhood, 8).steps) == most
        # pass rule: a step per line per pass, then the seed runs; neighbourhood: a step per pass
        assert len(search_chain(plan, configured, 8).steps) == params.search.passes * len(free) + 1
        assert len(search_chain(plan, neighbourhood, 8).steps) == params.search.passes + 1


def test_plan_prints_what_neighbourhood_and_speculate_would_change():
    days = _calendar_days("--gpus", "64")
    configured = "configured (stop_rule pass, speculate 0)"
    for phase in ("phase1", "law", "total"):
        assert days[(phase, "stop_rule: neighbourhood")] < days[(phase, configured)]
        assert days[(phase, "speculate: 1, no line moves")] < days[(phase, configured)]
        assert days[(phase, "speculate: 1, every line moves")] >= days[(phase, configured)]
    other = _calendar_days("--gpus", "64", "--set", "search.stop_rule=neighbourhood", "--set", "search.speculate=1")
    assert {search for phase, search in other if phase == "total"} == {
        "configured (stop_rule neighbourhood, speculate 1)", "stop_rule: pass, no line moves",
        "stop_rule: pass, every line moves", "speculate: 0"}
    # one worker trains inline: nothing speculates, so speculation is one row, no faster
    alone = _calendar_days("--gpus", "1")
    assert alone[("total", "speculate: 1")] == alone[("total", configured)]


def test_plan_note_compares_the_calendar_with_the_gpu_hours():
    done = _optsweep("plan", "--params", "params/presets/paper.yaml", "--gpus", "64")
    note = next(line for line in done.stdout.splitlines() if line.startswith("note: "))
    assert "days on 64 GPU(s)" in note and "GPU-hours alone" in note and "chains of sequential lines" in note
    assert "model: " in done.stdout


@pytest.mark.parametrize("gpus", ["0", "-2", "2.5", "eight"])
def test_bad_gpus_fails_in_one_line(gpus: str):
    done = _optsweep("plan", "--params", "params/presets/paper.yaml", f"--gpus={gpus}")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "--gpus" in done.stderr and "at least 1" in done.stderr


FANTASTIC_OPTIMIZERS = ("adamw", "nadamw", "cautious", "lion", "adam_mini", "mars", "muon", "scion", "kron", "soap")


def test_fantastic_preset_has_the_follow_up_studys_scales_and_optimizers():
    params = load_params(REPO / "params/presets/fantastic.yaml")
    assert (params.study.optimizer, *params.optimizers) == FANTASTIC_OPTIMIZERS
    widths = {scale.width for scale in params.scales.values()}
    assert widths == {512, 768, 1024, 1536} and {s.seq_len for s in params.scales.values()} == {4096}
    for width in widths:  # AdamW's L(D) needs 3+ data scales per size: 1/2/4/8x Chinchilla
        multiples = sorted(s.tokens / (20 * s.n_params) for s in params.scales.values() if s.width == width)
        assert multiples == pytest.approx([1, 2, 4, 8], rel=1e-6)


def test_fantastic_plan_prints_runs_and_gpu_hours_per_optimizer():
    done = _optsweep("plan", "--params", "params/presets/fantastic.yaml", "--gpus", "64")
    assert done.returncode == 0, done.stderr
    summary = done.stdout.split("per optimizer")[1].split("calendar")[0]
    rows = {line.split()[0]: line.split()[1:] for line in summary.splitlines()[3:] if line.strip()}
    assert tuple(rows) == FANTASTIC_OPTIMIZERS
    plans = scale_plans(load_params(REPO / "params/presets/fantastic.yaml"))
    adamw = [plan for plan in plans if plan.optimizer == "adamw"]
    first, most = sum(p.first_pass_runs for p in adamw), sum(p.max_runs for p in adamw)
    assert rows["adamw"] == [f"{first}/{most}", f"{sum(p.gpu_hours for p in adamw):,.0f}"]
