"""Size and power of the sensitivity verdicts, and coverage of the laws' intervals, on synthetic truths over
a design matrix like real studies.

    .venv/bin/python bench/analysis_calibration.py [--tables 3] [--seed 0] [--cells 3,6,12] [--grids common,...]

Design matrix (every combination): grids `common` (one grid for every scale, like the brief's) or
`neighbourhood` (per-scale slices of 2 steps either side of each scale's own optimum, 1 for clip and eps,
which do not reach the other scales' optima); shapes `smooth` (quadratics on the natural axis) or `hard`
(a step cost at clip = 0, a divergence cliff one grid step above the optimal lr and at the shortest
warmup, a plateau around the clip optimum); noise 0, 0.1%, 0.3% and 1% of the loss (multiplicative, one
seed per config), and for noise > 0 also with seeds (the best config and its neighbours on 3 seeds, with a
seed effect shared by every config of a scale, 3x the noise: common random numbers); 3, 6 or 12 cells.

Truths (each table draws its own noise): `flat` (every optimum constant), `lr_width` (lr x width constant:
not sensitive after the rule), `weight_decay` and `beta2` moving with data (power laws in D) by a worst
regret at the best common value of 1, 2 and 4x the noise of a difference (4x the threshold without
noise); lr moves as 1/width in every truth but `flat`. The threshold is 0.1% of the loss (so that 1x is
above it). Printed per design: the false-positive rate per hyperparameter (tables in which it was called
sensitive though truly not), the share of tables with any false positive, power at 1/2/4x, the coverage of
the 95% intervals of the laws' N and D exponents (weight decay and beta2 when they move, lr always; N and D
form, 6 and 12 cells), the median measured / true noise (without noise: the largest measured, relative to
the loss) and the noise sources that decided.
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from optsweep.analysis import analyze_sensitivity, fit_scaling_laws
from optsweep.params.sections import AnalysisSettings
from optsweep.results.documents import LawPhaseInputs
from optsweep.testing.tables import Scale, Truth, chinchilla_loss, constant, llama_scale, natural_axis, run_table

HPARAMS = ["lr", "weight_decay", "beta2", "clip", "warmup", "eps"]
CURVATURE = {"lr": 0.15, "weight_decay": 8.0, "beta2": 0.3, "clip": 0.02, "warmup": 0.01, "eps": 0.0}
COMMON_GRID = {
    "lr": [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2], "weight_decay": [0.0, 0.05, 0.1, 0.2, 0.3],
    "beta2": [0.9, 0.95, 0.98, 0.99], "clip": [0.0, 0.5, 1.0, 2.0], "warmup": [100, 250, 500, 1000, 2000],
    "eps": [1e-30, 1e-20, 1e-15, 1e-10],
}
# neighbourhood ladders: (step on the natural axis, half-width in steps)
LADDER = {"lr": (math.log(2) / 2, 2), "weight_decay": (0.05, 2), "beta2": (math.log(1.5), 2), "clip": (0.5, 1),
          "warmup": (math.log(2) / 2, 2), "eps": (math.log(1e5), 1)}
CELLS = {3: ([512, 1024], [2e9, 1e10]), 6: ([256, 512, 1024], [2e9, 8e9]),
         12: ([256, 512, 768, 1024], [1e9, 4e9, 1.6e10])}
THRESHOLD = 0.001
MAGNITUDES = (1, 2, 4)
SEEDED, SEED_EFFECT = 3, 3.0


def cells(count: int) -> list[Scale]:
    widths, budgets = CELLS[count]
    if count == 3:  # the brief's shape: (N, D), (N, 5D), (~4N, D)
        return [llama_scale("n1d1", widths[0], budgets[0]), llama_scale("n1d5", widths[0], budgets[1]),
                llama_scale("n4d1", widths[1], budgets[0])]
    return [llama_scale(f"w{w}_d{i}", w, t) for w in widths for i, t in enumerate(budgets)]


@dataclass(frozen=True)
class TruthCase:
    name: str
    moving: str | None  # the hyperparameter that truly moves with data (None: none)
    magnitude: float  # the worst true regret at the best common value, x the noise of a difference
    exponents: dict[str, dict[str, float]]  # per hyperparameter with a power law: {"N": b, "D": c}


def data_exponent(hparam: str, regret: float, scales: list[Scale]) -> float:
    """The D exponent that makes `hparam`'s worst regret at the best common value equal `regret`."""
    spread = 2 * math.sqrt(regret / CURVATURE[hparam])  # the natural-axis range of the optima
    log_d = np.log([s.tokens for s in scales])
    if hparam == "beta2":  # log(1 - beta2*) = log 0.05 + c log(D / D_ref), c < 0 (reported positive here)
        return spread / float(np.ptp(log_d))
    ratios = np.exp(log_d - log_d.mean())  # weight_decay* = 0.1 (D / D_ref)^c: solve 0.1 (r_hi^c - r_lo^c) = spread
    low, high = 0.0, 5.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if 0.1 * (ratios.max() ** mid - ratios.min() ** mid) < spread else (low, mid)
    return (low + high) / 2


def build_truth(case: TruthCase, scales: list[Scale], grids: str, shape: str) -> tuple[Truth, object]:
    log_d_ref = float(np.mean(np.log([s.tokens for s in scales])))
    c = case.exponents.get(case.moving or "", {}).get("D", 0.0)
    optimum = {
        "lr": constant(4e-3) if case.name == "flat" else (lambda s: 2e-3 * 1024 / s.width),
        "weight_decay": (lambda s: 0.1 * math.exp(c * (math.log(s.tokens) - log_d_ref)))
        if case.moving == "weight_decay" else constant(0.1),
        "beta2": (lambda s: 1 - 0.05 * math.exp(c * (math.log(s.tokens) - log_d_ref)))
        if case.moving == "beta2" else constant(0.95),
        "clip": constant(1.0), "warmup": constant(500), "eps": constant(1e-15),
    }
    grid = dict(COMMON_GRID) if grids == "common" else {h: _neighbourhood(h, optimum[h]) for h in HPARAMS}
    hard = shape == "hard"
    truth = Truth(optimum=optimum, curvature=dict(CURVATURE), grid=grid,
                  plateau={"clip": 0.3} if hard else {},
                  step=(lambda s, cfg: 0.02 if cfg["clip"] == 0 else 0.0) if hard else None)
    return truth, (_cliffs(optimum, grid) if hard else None)


def _neighbourhood(hparam: str, optimum) -> object:
    step, half = LADDER[hparam]

    def values(scale: Scale) -> list[float]:
        center = round(natural_axis(hparam, optimum(scale)) / step)
        xs = [(center + k) * step for k in range(-half, half + 1)]
        return sorted({_from_natural(hparam, x) for x in xs if _from_natural(hparam, x) >= 0})
    return values


def _from_natural(hparam: str, x: float) -> float:
    if hparam in ("lr", "eps"):
        return math.exp(x)
    if hparam == "warmup":
        return round(math.expm1(x))
    if hparam == "beta2":
        return -math.expm1(x)
    return round(x, 10)


def _cliffs(optimum: dict, grid: dict):
    """lr one grid step or more above the optimum diverges; so does the shortest warmup of the grid."""
    def diverged(scale: Scale, config: dict[str, float]) -> bool:
        lr_grid = sorted(grid["lr"](scale) if callable(grid["lr"]) else grid["lr"])
        step = math.log(lr_grid[1] / lr_grid[0])
        too_fast = math.log(config["lr"] / optimum["lr"](scale)) > 0.75 * step
        warmups = sorted(grid["warmup"](scale) if callable(grid["warmup"]) else grid["warmup"])
        return too_fast or config["warmup"] == warmups[0]
    return diverged


def truth_cases(noise: float, scales: list[Scale]) -> list[TruthCase]:
    cases = [TruthCase("flat", None, 0, {}), TruthCase("lr_width", None, 0, {})]
    mean_loss = float(np.mean([chinchilla_loss(s.n_params, s.tokens) for s in scales]))
    difference = math.sqrt(2) * noise * mean_loss
    for hparam, m in itertools.product(("weight_decay", "beta2"), MAGNITUDES if noise else (4,)):
        regret = m * difference if noise else m * THRESHOLD * mean_loss
        c = data_exponent(hparam, regret, scales)
        cases.append(TruthCase(f"{hparam}_x{m}", hparam, m, {hparam: {"N": 0.0, "D": -c if hparam == "beta2" else c}}))
    return cases


def lr_exponents(case: TruthCase) -> dict[str, float]:
    """lr* = 2e-3 x 1024 / width, and N = 96 width^2: lr* ~ N^-0.5 (constant for `flat`)."""
    return {"N": 0.0 if case.name == "flat" else -0.5, "D": 0.0}


def law_checks(table, truths: dict[str, dict[str, float]], settings: AnalysisSettings) -> tuple[list[bool], float]:
    """Whether the N and D form's 95% intervals of each law cover the true exponents, and the largest error
    of an exponent estimate."""
    laws = fit_scaling_laws(table, LawPhaseInputs(sensitive=list(truths), recommended={}), loss_law=False,
                            settings=settings).laws
    hits, error = [], 0.0
    for hparam, truth in truths.items():
        if hparam not in laws or "N_D" not in laws[hparam].forms:
            continue
        coefficients = laws[hparam].forms["N_D"].coefficients
        for k in ("N", "D"):
            c = coefficients[f"{k}_exponent"]
            hits.append(c["ci95"][0] <= truth[k] <= c["ci95"][1])
            error = max(error, abs(c["estimate"] - truth[k]))
    return hits, error


@dataclass
class Tally:
    tables: int = 0
    any_false: int = 0
    false: Counter = None
    insensitive_tables: Counter = None
    power: dict = None
    cover: list = None
    noise_ratio: list = None
    sources: Counter = None
    exponent_error: list = None

    def __post_init__(self) -> None:
        self.false, self.insensitive_tables, self.sources = Counter(), Counter(), Counter()
        self.power = {m: [] for m in MAGNITUDES}
        self.cover, self.noise_ratio, self.exponent_error = [], [], []


def run_design(design: tuple, tables: int, rng: np.random.Generator) -> Tally:
    grids, shape, noise, seeded, count = design
    scales = cells(count)
    settings = AnalysisSettings(threshold=THRESHOLD)
    tally = Tally()
    for case, _ in itertools.product(truth_cases(noise, scales), range(tables)):
        truth, diverged = build_truth(case, scales, grids, shape)
        table = run_table(truth, scales, relative_noise=noise, seed=int(rng.integers(2**31)), diverged=diverged,
                          seeded=SEEDED if seeded else 0, seed_effect=SEED_EFFECT * noise if seeded else 0.0)
        result = analyze_sensitivity(table, settings)
        found = set(result.sensitive)
        truly = {case.moving} if case.moving else set()
        tally.tables += 1
        tally.any_false += bool(found - truly)
        for h in HPARAMS:
            if h not in truly:
                tally.insensitive_tables[h] += 1
                tally.false[h] += h in found
        if case.moving:
            tally.power[case.magnitude if noise else 4].append(case.moving in found)
        tally.sources[result.noise.source] += 1
        tally.noise_ratio.append(result.noise.relative_std / noise if noise else result.noise.relative_std)
        if count >= 6:
            hits, error = law_checks(table, {"lr": lr_exponents(case), **case.exponents}, settings)
            tally.cover += hits
            if not noise:
                tally.exponent_error.append(error)
    return tally


def line(design: tuple, tally: Tally) -> str:
    grids, shape, noise, seeded, count = design
    false = " ".join(f"{h}:{tally.false[h] / max(tally.insensitive_tables[h], 1):.0%}" for h in HPARAMS)
    power = " ".join(f"{m}x:{np.mean(v):.0%}" if v else f"{m}x:-" for m, v in tally.power.items())
    cover = f"{np.mean(tally.cover):.0%} of {len(tally.cover)}" if tally.cover else "-"
    ratio = f"{np.median(tally.noise_ratio):.2f}" if noise else f"max {max(tally.noise_ratio):.1e} of the loss"
    extra = f" max|exponent error| {max(tally.exponent_error):.3g}" if tally.exponent_error else ""
    sources = ",".join(f"{k}:{v}" for k, v in tally.sources.items())
    return (f"| {grids} | {shape} | {noise:.1%} | {'yes' if seeded else 'no'} | {count} "
            f"| {tally.any_false / tally.tables:.0%} | {false} | {power} | {cover} | {ratio} | {sources}{extra} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=int, default=3, help="tables per truth per design")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cells", default="3,6,12")
    parser.add_argument("--grids", default="common,neighbourhood")
    parser.add_argument("--shapes", default="smooth,hard")
    parser.add_argument("--noise", default="0,0.001,0.003,0.01")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    print("| grid | shape | noise | seeds | cells | tables with a false positive | false positives per "
          "hyperparameter | power at 1/2/4x | law 95% coverage | noise measured/true | noise source |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    levels = [float(n) for n in args.noise.split(",")]
    counts = [int(c) for c in args.cells.split(",")]
    for grids, shape, noise, count in itertools.product(args.grids.split(","), args.shapes.split(","), levels, counts):
        for seeded in (False, True) if noise else (False,):
            design = (grids, shape, noise, seeded, count)
            print(line(design, run_design(design, args.tables, rng)), flush=True)
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
