"""Parallel speed of the executor: the same sweep of equal-length sleeping runs on 1 and on 2 workers.

    .venv/bin/python bench/executor_speed.py [--runs 8] [--sleep 1.0] [--workers 1 2]

Each sweep has one free hyperparameter with `--runs` grid values (one coordinate, so all runs of the
sweep are independent) and a fresh run store. The wall time includes starting the workers. With W
workers the ideal is runs / W x sleep; the printed efficiency is that ideal over the measured time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import optsweep.testing.trainers as synth
from optsweep.params.settings import load_params
from optsweep.search import run_sweep


def timed_sweep(folder: Path, workers: int, runs: int) -> tuple[float, int]:
    grid = [round(1e-3 * 1.5**i, 8) for i in range(runs)]
    baseline = {"lr": grid[0], "min_lr_ratio": 0.0, "warmup": 4, "beta1": 0.9, "beta2": 0.95,
                "weight_decay": 0.1, "eps": 1e-8, "clip": 1.0}
    path = synth.write_study(folder, "sleeper", study_workers=workers, grid={"lr": grid}, baseline=baseline,
                             search={"passes": 2, "tolerance": 3e-3})
    start = time.perf_counter()
    result = run_sweep(load_params(path), "a", folder / "a.json", progress=False)
    return time.perf_counter() - start, result["compute"]["runs_trained"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--sleep", type=float, default=1.0, help="seconds per run")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    os.environ["SYNTH_SLEEP"] = str(args.sleep)
    with tempfile.TemporaryDirectory() as scratch:
        walls = {}
        for workers in args.workers:
            wall, trained = timed_sweep(Path(scratch) / f"w{workers}", workers, args.runs)
            walls[workers] = wall
            ideal = -(-trained // workers) * args.sleep
            print(f"workers {workers}: {trained} runs of {args.sleep:g} s in {wall:.2f} s wall "
                  f"(ideal {ideal:.2f} s, efficiency {ideal / wall:.0%})")
        first = args.workers[0]
        for workers in args.workers[1:]:
            print(f"speedup {workers} vs {first} worker(s): {walls[first] / walls[workers]:.2f}x")


if __name__ == "__main__":
    main()
