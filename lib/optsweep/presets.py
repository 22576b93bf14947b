"""Presets (params/presets/*.yaml): switch the active params file, and print a study's plan (a dry run)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .config import ParamsError, StudyParams, load_params

PRESETS_DIR = Path("params/presets")
# Planning assumptions for GPU-hours: an H100/H200 bf16 dense peak and a model-FLOPs utilization a tuned
# trainer reaches at ~0.1B (reference/anchors.md, section 3).
PEAK_FLOPS = 989e12
ASSUMED_MFU = 0.40


def activate_preset(name: str, target: Path) -> str:
    """Validate params/presets/<name>.yaml and copy it over the active params file."""
    source = PRESETS_DIR / f"{name}.yaml"
    if not source.is_file():
        available = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
        raise ParamsError(f"preset {name!r} not found in {PRESETS_DIR}; available: {available}")
    load_params(source)
    tmp = target.with_suffix(".yaml.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)
    return f"{target} <- {source}"


def planned_runs(params: StudyParams, scale_name: str, free: list[str]) -> tuple[int, int]:
    """Runs of coordinate descent at one scale: (first pass, upper bound over all passes), both with the seed
    runs that measure the noise (the best and its closest competitors on `search.noise_seeds` more seeds)."""
    baseline, grid = params.scale_space(scale_name)
    steps = params.scale(scale_name).steps(baseline.get("batch_size"))
    per_pass = 0
    for name in free:
        values = [v for v in grid[name] if name != "warmup" or v < steps]
        per_pass += len([v for v in values if v != baseline[name]])
    search = params.search
    seed_runs = (1 + min(search.noise_candidates, per_pass)) * search.noise_seeds
    return 1 + per_pass + seed_runs, 1 + search.passes * per_pass + seed_runs


def print_plan(params: StudyParams) -> None:
    """Runs, tokens and estimated GPU-hours per optimizer and scale; law scales assume every grid hparam
    stays free."""
    studies = {params.study.optimizer: params, **{name: params.for_optimizer(name) for name in params.optimizers}}
    print(f"study {params.study.name!r}: {len(params.scales)} phase-1 scales, {len(params.law_scales)} law scales, "
          f"optimizers: {', '.join(studies)}")
    print(f"GPU-hours assume {ASSUMED_MFU:.0%} MFU of a {PEAK_FLOPS / 1e12:.0f} TFLOP/s GPU\n")
    header = (f"{'optimizer':<10} {'phase':<7} {'scale':<12} {'N':>10} {'D':>10} {'steps':>7} {'micro':>6} "
              f"{'runs 1st/max':>13} {'tokens (max)':>14} {'GPU-h (max)':>12}")
    print(header)
    print("-" * len(header))
    total_hours = 0.0
    total_runs = 0
    vocab = params.study.tokenizer.vocab_size if params.study.tokenizer.kind == "train" else 32000
    for label, study in studies.items():
        free = study.search_order()
        for phase, scales in (("phase1", study.scales), ("law", study.law_scales)):
            for name, scale in scales.items():
                first, most = planned_runs(study, name, free)
                tokens = most * scale.steps() * scale.batch_size * scale.seq_len
                hours = tokens * scale.flops_per_token(vocab) / (PEAK_FLOPS * ASSUMED_MFU) / 3600
                total_hours += hours
                total_runs += most
                micro = scale.micro_batch_size or study.study.train.micro_batch_size or scale.batch_size
                print(
                    f"{label:<10} {phase:<7} {name:<12} {scale.n_params:>10.3g} {scale.tokens:>10.3g} "
                    f"{scale.steps():>7} {micro:>6} {f'{first}/{most}':>13} {tokens:>14.3g} {hours:>12.1f}"
                )
    print(f"\nat most {total_runs} runs, about {total_hours:,.0f} GPU-hours "
          "(law scales: fewer once the sensitive set is known)")
