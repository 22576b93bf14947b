"""Presets (params/presets/*.yaml): switch the active params file, and print a study's plan (a dry run)."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from pathlib import Path
from typing import Literal

from ..params.sections import SearchSettings
from ..params.settings import ParamsError, StudyParams, load_params
from ..params.study import StudySettings

PRESETS_DIR = Path("params/presets")
# Planning assumptions for GPU-hours: an H100/H200 bf16 dense peak and a model-FLOPs utilization a tuned
# trainer reaches at ~0.1B (reference/anchors.md, section 3).
PEAK_FLOPS = 989e12
ASSUMED_MFU = 0.40
HOURS_PER_DAY = 24.0

Phase = Literal["phase1", "law"]


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


# --- run counts -----------------------------------------------------------------------------------------------


def line_runs(params: StudyParams, scale_name: str, free: list[str]) -> list[int]:
    """New runs of each coordinate's 1-D line in one pass, in the order the lines are visited: its valid grid
    values other than the baseline's (warmup no longer than the run)."""
    baseline, grid = params.scale_space(scale_name)
    steps = params.scale(scale_name).steps(baseline.get("batch_size"))
    return [len([v for v in grid[h] if v != baseline[h] and (h != "warmup" or v < steps)]) for h in free]


def seed_runs(search: SearchSettings, per_pass: int) -> int:
    """The runs that measure the noise: the best and its closest competitors on `search.noise_seeds` more seeds."""
    return (1 + min(search.noise_candidates, per_pass)) * search.noise_seeds


def planned_runs(params: StudyParams, scale_name: str, free: list[str]) -> tuple[int, int]:
    """Runs of coordinate descent at one scale: (first pass, upper bound over all passes), both with the seed
    runs that measure the noise (the best and its closest competitors on `search.noise_seeds` more seeds)."""
    per_pass = sum(line_runs(params, scale_name, free))
    seeds = seed_runs(params.search, per_pass)
    return 1 + per_pass + seeds, 1 + params.search.passes * per_pass + seeds


@dataclasses.dataclass(frozen=True)
class ScalePlan:
    """One scale's search as the planner sees it (a row of the plan's first table)."""

    optimizer: str
    phase: Phase
    scale: str
    n_params: int
    tokens: int  # per run
    steps: int
    micro_batch: int
    first_pass_runs: int
    max_runs: int
    run_gpu_hours: float  # one run, at the assumed MFU
    lines: tuple[int, ...]  # new runs of each coordinate line in one pass (see `line_runs`)
    seed_runs: int

    @property
    def max_tokens(self) -> int:
        return self.max_runs * self.tokens

    @property
    def gpu_hours(self) -> float:
        return self.max_runs * self.run_gpu_hours


def scale_plans(params: StudyParams) -> list[ScalePlan]:
    """Every scale of every optimizer's two phases; law scales assume every grid hyperparameter stays free."""
    studies = {params.study.optimizer: params, **{name: params.for_optimizer(name) for name in params.optimizers}}
    vocab = params.study.tokenizer.vocab_size if params.study.tokenizer.kind == "train" else 32000
    plans = []
    for label, study in studies.items():
        free = study.search_order()
        for phase, scales in (("phase1", study.scales), ("law", study.law_scales)):
            for name, scale in scales.items():
                first, most = planned_runs(study, name, free)
                lines = line_runs(study, name, free)
                tokens = scale.steps() * scale.batch_size * scale.seq_len
                plans.append(ScalePlan(
                    optimizer=label, phase=phase, scale=name, n_params=scale.n_params, tokens=tokens,
                    steps=scale.steps(),
                    micro_batch=scale.micro_batch_size or study.study.train.micro_batch_size or scale.batch_size,
                    first_pass_runs=first, max_runs=most,
                    run_gpu_hours=tokens * scale.flops_per_token(vocab) / (PEAK_FLOPS * ASSUMED_MFU) / 3600,
                    lines=tuple(lines), seed_runs=seed_runs(study.search, sum(lines)),
                ))
    return plans


# --- the calendar ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SearchVariant:
    """The search settings a calendar row plans with (the configured ones, or an alternative), and for a search
    that speculates, its bound: no line moves the baseline (the lines ahead are used) or every line does."""

    label: str
    search: SearchSettings
    every_line_moves: bool = False


def speculates(search: SearchSettings, gpus: int) -> bool:
    """Lines ahead start only under the pass rule, and only on a shared pool (one worker trains inline)."""
    return search.stop_rule == "pass" and search.speculate > 0 and gpus > 1


def search_variants(search: SearchSettings, gpus: int) -> list[SearchVariant]:
    """The configured search, the other stop rule, and `speculate` switched (on at 1 line ahead, or off); a
    search that speculates as its two bounds."""
    other_rule = "neighbourhood" if search.stop_rule == "pass" else "pass"
    speculate = 0 if search.speculate else 1
    settings = [
        (f"configured (stop_rule {search.stop_rule}, speculate {search.speculate})", search),
        (f"stop_rule: {other_rule}", search.model_copy(update={"stop_rule": other_rule})),
        (f"speculate: {speculate}", search.model_copy(update={"speculate": speculate})),
    ]
    variants = []
    for label, variant in settings:
        if speculates(variant, gpus):
            variants += [SearchVariant(f"{label}, no line moves", variant),
                         SearchVariant(f"{label}, every line moves", variant, every_line_moves=True)]
        else:
            variants.append(SearchVariant(label, variant))
    return variants


@dataclasses.dataclass(frozen=True)
class SearchChain:
    """One scale's search as a chain of sequential steps: the runs of a step train side by side, and the next
    step starts once they are all back."""

    steps: tuple[int, ...]  # runs started together, step after step
    wasted_runs: int  # speculative runs trained at a baseline the search then left (in no step)


def search_chain(plan: ScalePlan, variant: SearchVariant, gpus: int) -> SearchChain:
    """The sequential steps of the planner's upper bound (`search.passes` passes, every run new) under the
    variant's stop rule, then the seed runs."""
    search = variant.search
    passes = [list(plan.lines) for _ in range(search.passes)]
    passes[0][0] += 1  # the baseline rides along with the first line
    if search.stop_rule == "neighbourhood":  # each pass is one batch: the best's whole 1-D neighbourhood
        return SearchChain(tuple(runs for runs in [*map(sum, passes), plan.seed_runs] if runs), 0)
    lines = [runs for one_pass in passes for runs in one_pass]
    ahead = min(search.speculate, len(plan.lines) - 1) if speculates(search, gpus) else 0
    if variant.every_line_moves:  # each line waits for itself; the `ahead` lines started with it are lost
        steps, wasted = lines, search.passes * ahead * sum(plan.lines)
    else:  # the lines started ahead are the ones the search asks for next: ahead + 1 lines side by side
        steps, wasted = [sum(lines[i:i + ahead + 1]) for i in range(0, len(lines), ahead + 1)], 0
    return SearchChain(tuple(runs for runs in [*steps, plan.seed_runs] if runs), wasted)


def chain_hours(plan: ScalePlan, chain: SearchChain, gpus: int) -> float:
    """Hours of a chain whose steps may use every GPU: a step of n runs takes ceil(n / G) run lengths."""
    return sum(math.ceil(runs / gpus) for runs in chain.steps) * plan.run_gpu_hours


@dataclasses.dataclass(frozen=True)
class PhaseCalendar:
    """A phase of one optimizer (or, with phase None, the whole study) under one search variant."""

    optimizer: str | None
    phase: Phase | None
    variant: str
    gpu_hours: float  # at most: `search.passes` passes of new runs, wasted speculative runs included
    hours: float  # wall-clock on the planned GPUs
    limited_by: str  # the longest scale's chain, or the pool's GPU-hours

    @property
    def days(self) -> float:
        return self.hours / HOURS_PER_DAY


def phase_calendar(plans: list[ScalePlan], variant: SearchVariant, gpus: int) -> PhaseCalendar:
    """The scales of one phase on their shared pool (see `study_calendar` for the model)."""
    chains = [search_chain(plan, variant, gpus) for plan in plans]
    gpu_hours = sum((sum(chain.steps) + chain.wasted_runs) * plan.run_gpu_hours for plan, chain in zip(plans, chains))
    longest, plan = max(((chain_hours(plan, chain, gpus), plan) for plan, chain in zip(plans, chains)),
                        key=lambda pair: pair[0])
    pool_hours = gpu_hours / gpus
    limited_by = f"chain of {plan.scale}" if longest >= pool_hours else "GPU-hours / GPUs"
    return PhaseCalendar(plan.optimizer, plan.phase, variant.label, gpu_hours, max(longest, pool_hours), limited_by)


def study_calendar(plans: list[ScalePlan], search: SearchSettings, gpus: int) -> list[PhaseCalendar]:
    """Every phase under every search variant, then the study's totals, on a pool of `gpus`.

    The model. One run trains on one GPU for its GPU-hours (tokens x FLOPs per token at the assumed MFU). Within
    a scale, coordinate descent is a chain of steps: the values of one hyperparameter's 1-D line train side by
    side, but lines run one after another (each starts from the previous line's best), and so do passes; the
    seed runs that measure the noise come last (the slices through a converged best are the last pass's lines).
    The planner's upper bound is planned: `search.passes` passes, every run new; edge extensions and restarts
    from a lower run are not counted, as in the run counts. `stop_rule: neighbourhood` makes each pass one step
    (the best's whole neighbourhood in one batch). `speculate: k` (pass rule, a pool of more than one worker)
    starts the k lines ahead at today's baseline: while no line moves the baseline, k + 1 lines train side by
    side; when every line moves it, each line waits for itself and the k lines started with it are wasted.
    The scales of a phase run at once on one shared pool: a phase takes the longest scale's chain, each step of
    n runs taking ceil(n / G) run lengths as if that chain had the pool to itself, and no less than the phase's
    GPU-hours / G (so where the scales' steps together are wider than the pool, the calendar is a lower bound;
    which chain the pool favours is the scheduler's, not modelled here). Phases run one after
    another (the law phase after phase 1 and the sensitivity analysis; each optimizer after the previous one).
    """
    phases: dict[tuple[str, Phase], list[ScalePlan]] = {}
    for plan in plans:
        phases.setdefault((plan.optimizer, plan.phase), []).append(plan)
    variants = search_variants(search, gpus)
    rows = [phase_calendar(scales, variant, gpus) for scales in phases.values() for variant in variants]
    totals = [PhaseCalendar(None, None, variant.label,
                            sum(row.gpu_hours for row in rows if row.variant == variant.label),
                            sum(row.hours for row in rows if row.variant == variant.label), "phases in sequence")
              for variant in variants]
    return rows + totals


# --- the printout ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GpuCount:
    """The GPUs the calendar plans for, and where that number came from."""

    count: int
    source: str


def default_gpus(study: StudySettings) -> GpuCount:
    """What the study's executor would train on: the Ray cluster's GPUs with `study.executor: ray` on a running
    cluster, else this machine's visible GPUs (as the local pool pins them); one on a box without any."""
    from ..execution.workers import visible_gpus  # nvidia-smi, not a seconds-long torch import

    if study.train.device == "cpu":
        return GpuCount(1, "study.train.device is cpu: one worker; --gpus G plans for G")
    if study.executor == "ray" and study.ray.address != "local":
        return _ray_gpus(study)
    visible = len(visible_gpus())
    if not visible:
        return GpuCount(1, "no GPU visible here: one worker; --gpus G plans for G")
    return GpuCount(visible, "the GPUs visible here; --gpus G plans for G")


def _ray_gpus(study: StudySettings) -> GpuCount:
    import ray

    from ..execution.ray_cluster import alive_nodes, connect

    connection = connect(study)
    try:
        gpus = sum(int(node.get("GPU", 0)) for node in alive_nodes())
    finally:
        if connection.owned:
            ray.shutdown()
    if not gpus:
        return GpuCount(1, f"the Ray cluster at {study.ray.address} has no GPU: one worker; --gpus G plans for G")
    return GpuCount(gpus, f"the Ray cluster at {study.ray.address}; --gpus G plans for G")

def optimizer_totals(plans: list[ScalePlan]) -> dict[str, tuple[int, int, float]]:
    """Per optimizer, over its scales and phases: first-pass runs, at most runs, and those runs' GPU-hours."""
    totals: dict[str, tuple[int, int, float]] = {}
    for plan in plans:
        first, most, hours = totals.get(plan.optimizer, (0, 0, 0.0))
        totals[plan.optimizer] = (first + plan.first_pass_runs, most + plan.max_runs, hours + plan.gpu_hours)
    return totals


def _print_per_optimizer(plans: list[ScalePlan]) -> None:
    header = f"{'optimizer':<10} {'runs 1st/max':>13} {'GPU-h (max)':>12}"
    print("per optimizer (every scale and phase)")
    print(header)
    print("-" * len(header))
    for optimizer, (first, most, hours) in optimizer_totals(plans).items():
        print(f"{optimizer:<10} {f'{first}/{most}':>13} {hours:>12,.0f}")
    print()


def print_plan(params: StudyParams, gpus: GpuCount) -> None:
    """Runs, tokens and estimated GPU-hours per optimizer and scale, then the calendar on `gpus`."""
    plans = scale_plans(params)
    optimizers = dict.fromkeys(plan.optimizer for plan in plans)
    print(f"study {params.study.name!r}: {len(params.scales)} phase-1 scales, {len(params.law_scales)} law scales, "
          f"optimizers: {', '.join(optimizers)}")
    print(f"GPU-hours assume {ASSUMED_MFU:.0%} MFU of a {PEAK_FLOPS / 1e12:.0f} TFLOP/s GPU\n")
    header = (f"{'optimizer':<10} {'phase':<7} {'scale':<12} {'N':>10} {'D':>10} {'steps':>7} {'micro':>6} "
              f"{'runs 1st/max':>13} {'tokens (max)':>14} {'GPU-h (max)':>12} {'run h':>7}")
    print(header)
    print("-" * len(header))
    for plan in plans:
        print(f"{plan.optimizer:<10} {plan.phase:<7} {plan.scale:<12} {plan.n_params:>10.3g} {plan.tokens:>10.3g} "
              f"{plan.steps:>7} {plan.micro_batch:>6} {f'{plan.first_pass_runs}/{plan.max_runs}':>13} "
              f"{plan.max_tokens:>14.3g} {plan.gpu_hours:>12.1f} {plan.run_gpu_hours:>7.1f}")
    total_runs = sum(plan.max_runs for plan in plans)
    total_hours = sum(plan.gpu_hours for plan in plans)
    print(f"\nat most {total_runs} runs, about {total_hours:,.0f} GPU-hours "
          "(law scales: fewer once the sensitive set is known)\n")
    _print_per_optimizer(plans)
    _print_calendar(study_calendar(plans, params.search, gpus.count), gpus)


def _print_calendar(rows: list[PhaseCalendar], gpus: GpuCount) -> None:
    print(f"calendar on {gpus.count} GPU(s) ({gpus.source})")
    header = f"{'optimizer':<10} {'phase':<7} {'search':<60} {'GPU-h (max)':>12} {'days':>7}  limited by"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row.optimizer or 'total':<10} {row.phase or '':<7} {row.variant:<60} {row.gpu_hours:>12,.0f} "
              f"{row.days:>7.1f}  {row.limited_by}")
    configured = next(row for row in rows if row.phase is None)
    spread_days = configured.gpu_hours / gpus.count / HOURS_PER_DAY
    why = ("the chains of sequential lines set the rest" if configured.days > spread_days * 1.005
           else "the GPUs, not the chains of lines, are the limit")
    print(f"\nnote: the configured search takes about {configured.days:.0f} days on {gpus.count} GPU(s), "
          f"{configured.days / spread_days:.2f}x the {spread_days:.0f} days its GPU-hours alone would take: {why}")
    print(CALENDAR_MODEL)


# The footer: `study_calendar`'s model in short.
CALENDAR_MODEL = """\
model: a run trains on one GPU for its GPU-hours (run h). Within a scale, a line's values train side by side; lines
and passes run one after another (each from the last best), then the seed runs. A phase's scales share the pool: it
takes its longest chain (a step of n runs: ceil(n / G) run lengths, the pool to itself), at least its GPU-hours / G
(a lower bound where the scales' steps together are wider than G); phases and optimizers run one after another.
Upper bound: search.passes passes of new runs, no edge extensions. neighbourhood: one step a pass (the whole
neighbourhood). speculate k (pass rule, G > 1): k + 1 lines side by side while no line moves the baseline; when
every line moves it, k lines' runs wasted per line."""
