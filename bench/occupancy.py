"""Device occupancy of phase 1: one sweep per scale after another (before) against all scales on one pool (after).

    .venv/bin/python bench/occupancy.py [--workers 8] [--sleep 1.0] [--params params/presets/paper.yaml]
                                        [--stop-rule pass|neighbourhood] [--repeats 1]

The study is the paper preset's phase 1 (its three scales, grids, baseline and search settings) with a
synthetic trainer whose runs all take `--sleep` seconds (the bowl loss surface decides the search path),
on `--workers` worker processes. Occupancy = the seconds of training done / (workers x wall seconds), the
wall time counting worker start-up; "while searching" counts only the span from the first run's start to the
last run's end, so it leaves out worker start-up (seconds here, against runs of hours on a GPU). "Before"
runs `run_sweep` for each scale in turn, as DVC's per-scale stages did; "after" runs `run_phase`, the
`sweeps` stage of dvc.yaml. With equal-length runs the scales' lines end within milliseconds of each other,
and which line a freed worker sees first decides whether phase 1 takes one wave of runs more or less:
`--repeats N` runs "after" N times and prints each figure and their mean.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from optsweep.params.settings import validate_params
from optsweep.runs.store import RunStore
from optsweep.search import run_phase, run_sweep


def synthetic_study(params_file: Path, store: Path, workers: int, stop_rule: str | None) -> dict:
    raw = yaml.safe_load(params_file.read_text())
    raw["study"].update(trainer="optsweep.testing.trainers:sleeper", store=str(store), workers=workers,
                        train={"device": "cpu"})
    if stop_rule:
        raw["search"]["stop_rule"] = stop_rule
    return raw


def occupancy(trained: int, sleep: float, workers: int, wall: float) -> float:
    return trained * sleep / (workers * wall)


def searching_span(store: Path) -> float:
    """Seconds from the first run's start to the last run's end (the sleeper trainer records both)."""
    results = [record.result for record in RunStore(store) if record.result]
    return max(r["ended"] for r in results) - min(r["started"] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--sleep", type=float, default=1.0, help="seconds per run")
    parser.add_argument("--params", type=Path, default=Path("params/presets/paper.yaml"))
    parser.add_argument("--stop-rule", choices=["pass", "neighbourhood"], default=None,
                        help="search.stop_rule (default: the params file's)")
    parser.add_argument("--repeats", type=int, default=1, help="times to run 'after' (its figure varies)")
    args = parser.parse_args()
    os.environ["SYNTH_SLEEP"] = str(args.sleep)
    rule = args.stop_rule or "as in the params"
    print(f"phase 1 of {args.params} ({args.workers} workers, {args.sleep:g} s per run, stop rule {rule})")
    modes = ["before: one scale after another"] + ["after: all scales on one pool"] * args.repeats
    figures: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, mode in enumerate(modes):
            folder = Path(tmp) / str(i)
            params = validate_params(synthetic_study(args.params, folder / "runs", args.workers, args.stop_rule))
            start = time.perf_counter()
            if mode.startswith("before"):
                trained = sum(run_sweep(params, name, folder / f"{name}.json", progress=False)["compute"]
                              ["runs_trained"] for name in params.scales)
            else:
                results = run_phase(params, "phase1", folder, progress=False)
                trained = sum(result.compute.runs_trained for result in results.values())
            wall = time.perf_counter() - start
            span = searching_span(folder / "runs")
            busy = (occupancy(trained, args.sleep, args.workers, wall),
                    occupancy(trained, args.sleep, args.workers, span))
            figures.setdefault(mode, []).append(busy)
            print(f"{mode:<34} {trained:4d} runs in {wall:7.1f} s: occupancy {busy[0]:6.1%}; "
                  f"while searching ({span:.1f} s) {busy[1]:6.1%}")
    if args.repeats > 1:
        after = figures[modes[-1]]
        print(f"after, mean of {len(after)}: occupancy {statistics.mean(f[0] for f in after):6.1%}; while searching "
              f"{statistics.mean(f[1] for f in after):6.1%} (from {min(f[1] for f in after):.1%} "
              f"to {max(f[1] for f in after):.1%})")


if __name__ == "__main__":
    main()
