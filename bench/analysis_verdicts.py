"""How often the analysis gets the sensitive set right, and how often the lr law's intervals cover the truth,
on random synthetic studies with one seed per config and run-to-run noise of 0.1-0.3% of the loss.

    .venv/bin/python bench/analysis_verdicts.py [--tables 10] [--seed 0]

Each table is a converged coordinate descent (the best grid config and its 1-D slices) at 6 scales (3
widths x 2 token budgets) over seven hyperparameters. Only lr (Step Law: N^-0.713 D^0.307) and weight decay
(growing with N) truly move with scale; warmup, beta2, clip and min_lr_ratio have fixed optima the loss
cares about, and eps does not matter. Each table draws its own noise level (uniform in 0.1-0.3% of the
loss, multiplicative, one run per config) and its own noise. Printed: the sensitive set per table, how many
equal the truth, and the 95%-interval coverage of the lr law's N and D exponents (N and D form), on the
full lr grid (WLS) and on a grid cut below the two largest lr optima (their scales' optima sit at the grid
edge and enter as censored observations).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from optsweep.analysis import analyze_sensitivity, fit_scaling_laws  # noqa: E402
from synthetic_tables import Truth, constant, run_table, scale_grid, sqrt2_grid  # noqa: E402

STEP_LAW = {"prefactor": 1.79, "N": -0.713, "D": 0.307}
SCALES = scale_grid([256, 512, 1024], [2e9, 8e9])
TRULY_SENSITIVE = ["lr", "weight_decay"]


def step_law_lr(scale) -> float:
    return STEP_LAW["prefactor"] * scale.n_params ** STEP_LAW["N"] * scale.tokens ** STEP_LAW["D"]


def weight_decay_by_model(scale) -> float:
    return 0.1 * (scale.n_params / SCALES[0].n_params) ** 0.5


OPTIMA = [step_law_lr(s) for s in SCALES]
TRUTH = Truth(
    optimum={
        "lr": step_law_lr, "min_lr_ratio": constant(0.1), "warmup": constant(1000), "beta2": constant(0.95),
        "weight_decay": weight_decay_by_model, "eps": constant(1e-12), "clip": constant(1.0),
    },
    curvature={"lr": 0.2, "min_lr_ratio": 0.5, "warmup": 0.05, "beta2": 0.05, "weight_decay": 8.0, "eps": 0.0,
               "clip": 0.1},
    grid={
        "lr": sqrt2_grid(min(OPTIMA) / 3, max(OPTIMA) * 3), "min_lr_ratio": [0.0, 0.05, 0.1, 0.2, 0.3],
        "warmup": [250, 500, 1000, 2000, 4000], "beta2": [0.9, 0.95, 0.98, 0.99, 0.995],
        "weight_decay": [0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5], "eps": [1e-16, 1e-14, 1e-12, 1e-10, 1e-8],
        "clip": [0.25, 0.5, 1.0, 1.5, 2.0],
    },
)


def exponents_covered(table, law_kind: list[str]) -> list[bool]:
    """Whether the lr law's (N and D form) 95% intervals cover the true N and D exponents."""
    law = fit_scaling_laws(table, {"sensitive": ["lr"], "recommended": {}}, loss_law=False)["laws"].get("lr")
    if not law or "N_D" not in law["forms"]:
        return []
    law_kind.append(f"{law['kind']} ({law['method']})")
    coefficients = law["forms"]["N_D"]["coefficients"]
    return [coefficients[f"{k}_exponent"]["ci95"][0] <= STEP_LAW[k] <= coefficients[f"{k}_exponent"]["ci95"][1]
            for k in ("N", "D")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    right, started = 0, time.perf_counter()
    covered: dict[str, list[bool]] = {"full grid": [], "grid cut below the two largest optima": []}
    cut = {**TRUTH.grid, "lr": [v for v in TRUTH.grid["lr"] if v < sorted(OPTIMA)[-2]]}
    truncated = Truth(optimum=TRUTH.optimum, curvature=TRUTH.curvature, grid=cut)
    for table_index in range(args.tables):
        noise = float(rng.uniform(0.001, 0.003))
        table_seed = int(rng.integers(2**31))
        table = run_table(TRUTH, SCALES, relative_noise=noise, seed=table_seed)
        sensitivity = analyze_sensitivity(table)
        found = sensitivity["sensitive"]
        right += found == TRULY_SENSITIVE
        line = (f"table {table_index}: noise {noise:.2%}, measured {sensitivity['noise']['relative_std']:.2%}; "
                f"sensitive {found}; inconclusive {sensitivity['inconclusive']}")
        kinds: list[str] = []
        for name, truth in zip(covered, (TRUTH, truncated)):
            hits = exponents_covered(run_table(truth, SCALES, relative_noise=noise, seed=table_seed), kinds)
            covered[name] += hits
            line += f"; {name}: N and D exponents covered {hits}"
        line += f"; lr law forms chosen: {kinds}"
        print(line)
    print(f"sensitive set equal to the truth {TRULY_SENSITIVE}: {right} of {args.tables} tables")
    for name, hits in covered.items():
        if hits:
            print(f"lr law 95% intervals (N and D form), {name}: cover the true exponents {sum(hits)} of "
                  f"{len(hits)} ({sum(hits) / len(hits):.0%})")
    print(f"{time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
