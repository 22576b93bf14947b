"""Run tables from two published AdamW sweeps, in the format `optsweep analyze` reads.

Sources (neither is redistributed here; get the files yourself, then run this script offline):

- Step Law (arXiv 2503.04715): `git clone https://github.com/step-law/steplaw`, file
  `data/dense_lr_bs_loss.csv`. One row per trained dense model: shape (h, ffnh, numh, numl), lr, bs (batch
  size in sequences of 2048 tokens: bs * ti * 2048 = D), ti (iterations), loss, smooth loss, D (tokens),
  N (non-embedding parameters). The repository states no license: use the data for analysis, do not commit it.
- Marin AdamW Phase-I sweep: `git clone https://github.com/marin-community/marin`, folder
  `experiments/optimizer_sweep/Analysis/Results/adamw/<size>/<chinchilla>/result.json`. Each file holds the
  coordinate-descent incumbent (`best_config`, loss in `baseline.loss`) and its 1-D neighbourhood
  (`ablations`: best_config with one key changed). See the repository for its license terms.

Usage:
    python bench/published_tables.py steplaw dense_lr_bs_loss.csv --out steplaw.csv [--loss loss|smooth]
    python bench/published_tables.py steplaw-own dense_lr_bs_loss.csv [--loss loss|smooth]
    python bench/published_tables.py marin RESULTS_DIR --out marin_adamw.csv

`steplaw-own` refits the released runs the way Step Law's own code does (`code/fit_tool.py`,
`query_optimal_lr_bs_data` and `get_bootstrap_lr_bs_scaling_models`): every run within 0.25% of its (N, D)
cell's best smoothed loss, OLS of log lr on log N and log D (N non-embedding, as here), 1000 bootstrap
resamples of those runs. It prints the exponents with their bootstrap 95% intervals, to compare with the
published law (lr* = 1.79 N^-0.713 D^0.307) and with what `optsweep analyze` finds on the same runs.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.api as sm

STEPLAW_SEQ_LEN = 2048
STEPLAW_COLUMNS = ("h", "lr", "bs", "ti", "loss", "smooth loss", "D", "N")
STEPLAW_LOSS = {"loss": "loss", "smooth": "smooth loss"}
STEPLAW_BAND = 0.0025  # Step Law's near-optimal band: runs within 0.25% of their cell's best
STEPLAW_BOOTSTRAP = 1000

MARIN_SEQ_LEN = 4096
MARIN_LAYERS = 32
MARIN_SHAPES = {"130m": (512, 2048), "300m": (768, 3072), "520m": (1024, 4096), "1.2b": (1536, 6144)}
MARIN_HPARAMS = {  # Marin's key -> the analysis' name (nesterov is dropped: never swept)
    "learning_rate": "lr",
    "min_lr_ratio": "min_lr_ratio",
    "warmup": "warmup",
    "beta1": "beta1",
    "beta2": "beta2",
    "weight_decay": "weight_decay",
    "epsilon": "eps",
    "max_grad_norm": "clip",
    "train_batch_size": "batch_size",
}
MARIN_TOKENS = re.compile(r"^sweep-[^-]+-(\d+(?:\.\d+)?)B-")


class InputError(Exception):
    """Bad input: the message names the file and what is wrong."""


def steplaw_table(csv_path: Path, loss: str) -> pd.DataFrame:
    """Every Step Law run as a row; each (N, D) cell is one scale; hyperparameters lr and batch_size."""
    runs = read_steplaw(csv_path)
    return pd.DataFrame(
        {
            "scale": [f"N{n / 1e6:.0f}M_D{d / 1e9:g}B" for n, d in zip(runs["N"], runs["D"])],
            "n_params": runs["N"],
            "tokens": runs["D"],
            "width": runs["h"],
            "lr": runs["lr"],
            "batch_size": runs["bs"],
            "loss": runs[STEPLAW_LOSS[loss]],
            "seq_len": STEPLAW_SEQ_LEN,
            "steps": runs["ti"],
        }
    )


def read_steplaw(csv_path: Path) -> pd.DataFrame:
    try:
        runs = pd.read_csv(csv_path)
    except (OSError, ValueError) as error:
        raise InputError(f"{csv_path}: not a readable CSV ({str(error).splitlines()[0]})") from None
    missing = [c for c in STEPLAW_COLUMNS if c not in runs.columns]
    if missing:
        raise InputError(f"{csv_path}: missing column(s) {', '.join(missing)}")
    return runs


def steplaw_own_fit(runs: pd.DataFrame, loss: str, seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """Step Law's own lr fit on these runs: per exponent, the estimate on the band's runs and the bootstrap
    2.5% and 97.5% quantiles (their intervals: the runs of one cell are resampled as if independent)."""
    column = STEPLAW_LOSS[loss]
    best = runs.groupby(["N", "D"])[column].transform("min")
    band = runs[(runs[column] / best - 1).abs() < STEPLAW_BAND]
    design = sm.add_constant(np.log(band[["N", "D"]].to_numpy(float)))
    log_lr = np.log(band["lr"].to_numpy(float))
    estimate = sm.OLS(log_lr, design).fit().params
    rng = np.random.default_rng(seed)
    draws = np.array([sm.OLS(log_lr[i], design[i]).fit().params
                      for i in (rng.integers(len(band), size=len(band)) for _ in range(STEPLAW_BOOTSTRAP))])
    low, high = np.percentile(draws, [2.5, 97.5], axis=0)
    return {name: (float(estimate[k]), float(low[k]), float(high[k])) for k, name in ((1, "N"), (2, "D"))}


def marin_table(results_dir: Path) -> pd.DataFrame:
    """The baseline and every ablation of each `<size>/<chinchilla>/result.json` as rows."""
    paths = sorted(results_dir.glob("*/*/result.json"))
    if not paths:
        raise InputError(f"{results_dir}: no <size>/<chinchilla>/result.json files")
    rows = [row for path in paths for row in marin_rows(path)]
    return pd.DataFrame(rows)


def marin_rows(path: Path) -> list[dict[str, Any]]:
    """One sweep cell: its scale columns plus the baseline's and each ablation's hparams and loss."""
    size, chinchilla = path.parent.parent.name, path.parent.name
    if size not in MARIN_SHAPES:
        raise InputError(f"{path}: unknown model size {size!r}; known: {', '.join(MARIN_SHAPES)}")
    result = read_json(path)
    try:
        best, baseline_loss = result["best_config"], result["baseline"]["loss"]
        ablations, name = result.get("ablations", []), result["name"]["Baseline"]  # some cells list none
        configs = [(best, baseline_loss)]
        configs += [({**best, a["param"]: a["value"]}, a["loss"]) for a in ablations]
        hparams = [{ours: config[theirs] for theirs, ours in MARIN_HPARAMS.items()} for config, _ in configs]
    except (KeyError, TypeError) as error:
        raise InputError(f"{path}: missing or malformed field {error}") from None
    width, mlp = MARIN_SHAPES[size]
    scale = {
        "scale": f"{size}_x{chinchilla}",
        "n_params": MARIN_LAYERS * (3 * width * mlp + 4 * width**2),
        "tokens": marin_tokens(path, name),
        "width": width,
    }
    return [
        {**scale, **h, "loss": loss, "status": "missing" if loss is None else "ok", "seq_len": MARIN_SEQ_LEN}
        for h, (_, loss) in zip(hparams, configs)  # a null loss: an ablation never run (num_left > 0)
    ]


def marin_tokens(path: Path, run_name: str) -> float:
    """The token budget from a run name: `sweep-130m-2B-...` is 2e9 tokens."""
    match = MARIN_TOKENS.match(run_name or "")
    if not match:
        raise InputError(f"{path}: baseline run name {run_name!r} has no token budget (sweep-<size>-<N>B-...)")
    return float(match.group(1)) * 1e9


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: not readable JSON ({error})") from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sources = parser.add_subparsers(dest="source", required=True)
    steplaw = sources.add_parser("steplaw", help="Step Law's dense_lr_bs_loss.csv")
    steplaw.add_argument("csv_path", type=Path)
    steplaw.add_argument("--loss", choices=sorted(STEPLAW_LOSS), default="loss", help="final or smoothed loss")
    own = sources.add_parser("steplaw-own", help="Step Law's own lr fit on the released runs")
    own.add_argument("csv_path", type=Path)
    own.add_argument("--loss", choices=sorted(STEPLAW_LOSS), default="smooth", help="final or smoothed loss")
    marin = sources.add_parser("marin", help="Marin's Results/adamw folder")
    marin.add_argument("results_dir", type=Path)
    for sub in (steplaw, marin):
        sub.add_argument("--out", type=Path, required=True, help="CSV file to write")
    return parser.parse_args(argv)


def print_own_fit(csv_path: Path, loss: str) -> None:
    fit = steplaw_own_fit(read_steplaw(csv_path), loss)
    print(f"Step Law's own fit on {csv_path} ({STEPLAW_LOSS[loss]!r} column): "
          + "; ".join(f"{k} exponent {e:.3f} [{lo:.3f}, {hi:.3f}]" for k, (e, lo, hi) in fit.items()))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.source == "steplaw-own":
            print_own_fit(args.csv_path, args.loss)
            return 0
        table = steplaw_table(args.csv_path, args.loss) if args.source == "steplaw" else marin_table(args.results_dir)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(f"{args.out}: {len(table)} runs at {table['scale'].nunique()} scales")
    return 0


if __name__ == "__main__":
    sys.exit(main())
