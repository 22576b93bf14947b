"""Does the reported best hold up? Retrain each phase-1 scale's reported best on seeds the study never used.

    .venv/bin/python bench/retrain_best.py [--seeds 3] [--first-seed 1000] [--workers 2]

A sweep's best is the lowest of many noisy runs, so its reported loss is biased low (the winner's curse);
the reported noise says by how much one config's loss scatters. Each fresh seed moves the initialisation
and the batch order (as the study's noise seeds do), from `--first-seed` on, far from the seeds a study
uses (its own, then the next few). Printed per scale: the reported best loss, the two seed noises of
results/sensitivity.json, each fresh loss, their mean, and that mean's distance from the reported best.

Two noises, because a fresh seed is not paired with the study's: the *paired* noise of one config (the
config-by-seed interaction, which is what comparisons under common random numbers see, and what the
verdicts were judged against) and the *unpaired* seed std of one run (`std`: a run about its config's mean,
seed effect included). The mean of k fresh seeds minus one reported run has the std of an unpaired
difference, seed_std x sqrt(1 + 1/k): the last column is the distance in that unit.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
from multiprocessing import Pool

from optsweep.data.prepare import ensure_prepared
from optsweep.params.paths import enter_root
from optsweep.params.settings import StudyParams, load_params
from optsweep.results.documents import SensitivityResult, SweepResult, read_document
from optsweep.runs.trainer import load_trainer, make_run_spec


def train_best(job: tuple[str, int]) -> tuple[str, int, float]:
    scale, seed = job
    params = load_params(PATHS.params)
    best = read_document(PATHS.sweeps("phase1") / f"{scale}.json", SweepResult).best
    spec = make_run_spec(params, scale, best, ensure_prepared(params), seed=seed, batch_seed=seed)
    return scale, seed, load_trainer(params.study.trainer)(spec)["loss"]


def report(params: StudyParams, losses: dict[str, dict[int, float]]) -> None:
    noise = read_document(PATHS.sensitivity, SensitivityResult).noise  # the noise the analysis judged against
    seeds = noise.estimates.get("seeds") if noise is not None else None
    if seeds is None:
        raise SystemExit(f"{PATHS.sensitivity}: records no seed noise")
    seed_std = seeds["std"]  # loss units, pooled over every scale's replicated configs
    print(f"{'scale':<8} {'reported best':>13} {'paired (1 config)':>17} {'unpaired seed std':>17}  "
          "fresh seeds -> mean   (mean - best) / (seed std x sqrt(1 + 1/k))")
    for scale in params.scales:
        reported = read_document(PATHS.sweeps("phase1") / f"{scale}.json", SweepResult).best_loss
        fresh = losses[scale]
        mean = statistics.fmean(fresh.values())
        unpaired = seed_std * math.sqrt(1 + 1 / len(fresh))
        each = ", ".join(f"{loss:.4f}" for _, loss in sorted(fresh.items()))
        print(f"{scale:<8} {reported:>13.4f} {noise.per_scale[scale].config_std:>17.4f} {seed_std:>17.4f}  "
              f"{each} -> {mean:.4f}   {(mean - reported) / unpaired:+.2f}")


PATHS = enter_root()

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    study = load_params(PATHS.params)
    jobs = list(itertools.product(study.scales, range(args.first_seed, args.first_seed + args.seeds)))
    with Pool(args.workers) as pool:
        results = pool.map(train_best, jobs, chunksize=1)
    by_scale: dict[str, dict[int, float]] = {scale: {} for scale in study.scales}
    for scale, seed, loss in results:
        by_scale[scale][seed] = loss
    report(study, by_scale)
