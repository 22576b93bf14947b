"""Does the reported best hold up? Retrain each phase-1 scale's reported best on seeds the study never used.

    .venv/bin/python bench/retrain_best.py [--seeds 3] [--first-seed 1000] [--workers 2]

A sweep's best is the lowest of many noisy runs, so its reported loss is biased low (the winner's curse);
the reported noise says by how much one config's loss scatters. Each fresh seed moves the initialisation
and the batch order (as the study's noise seeds do), from `--first-seed` on, far from the seeds a study
uses (its own, then the next few). Printed per scale: the reported best loss, the reported noise of one
config (results/sensitivity.json), each fresh loss, their mean, and that mean's distance from the reported
best in units of the reported noise.
"""

from __future__ import annotations

import argparse
import itertools
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
    if noise is None:
        raise SystemExit(f"{PATHS.sensitivity}: records no noise")
    print(f"{'scale':<8} {'reported best':>13} {'noise (1 config)':>16}  fresh seeds -> mean   (mean - best) / noise")
    for scale in params.scales:
        reported = read_document(PATHS.sweeps("phase1") / f"{scale}.json", SweepResult).best_loss
        config_std = noise.per_scale[scale].config_std
        fresh = losses[scale]
        mean = statistics.fmean(fresh.values())
        each = ", ".join(f"{loss:.4f}" for _, loss in sorted(fresh.items()))
        print(f"{scale:<8} {reported:>13.4f} {config_std:>16.4f}  {each} -> {mean:.4f}   "
              f"{(mean - reported) / config_std:+.2f}")


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
