"""Run tables from two published AdamW sweeps, in the format `optsweep analyze` reads.

Sources (neither is redistributed here; get the files yourself, then run this script offline):

- Step Law (arXiv 2503.04715): `git clone https://github.com/step-law/steplaw`, file
  `data/dense_lr_bs_loss.csv`. One row per trained dense model: shape (h, ffnh, numh, numl), lr, bs (batch
  size in sequences of 2048 tokens: bs * ti * 2048 = D), ti (iterations), loss, smooth loss, D (tokens),
  N (non-embedding parameters). The repository states no license: use the data for analysis, do not commit it.
- Marin optimizer sweeps: `git clone https://github.com/marin-community/marin`, folder
  `experiments/optimizer_sweep/Analysis/Results/<optimizer>/<size>/<chinchilla>/result.json`. Each file holds
  the coordinate-descent incumbent (`best_config`, loss in `baseline.loss`) and its 1-D neighbourhood
  (`ablations`: best_config with one key changed). A run's data is 20 N x <chinchilla> tokens (the run names'
  `-<N>B-` truncates it: `130m-2B` is 2.68e9 tokens). See the repository for its license terms.

Usage:
    python bench/published_tables.py steplaw dense_lr_bs_loss.csv --out steplaw.csv [--loss loss|smooth]
    python bench/published_tables.py steplaw-own dense_lr_bs_loss.csv [--loss loss|smooth]
    python bench/published_tables.py marin RESULTS_DIR --out marin_adamw.csv      # one optimizer's folder
    python bench/published_tables.py marin-all RESULTS_ROOT --out marin.csv        # every optimizer, `optimizer` column

`steplaw-own` refits the released runs the way Step Law's own code does (`code/fit_tool.py`,
`query_optimal_lr_bs_data` and `get_bootstrap_lr_bs_scaling_models`): every run within 0.25% of its (N, D)
cell's best smoothed loss, OLS of log lr on log N and log D (N non-embedding, as here), 1000 bootstrap
resamples of those runs. It prints the exponents with their bootstrap 95% intervals, to compare with the
published law (lr* = 1.79 N^-0.713 D^0.307) and with what `optsweep analyze` finds on the same runs.
"""

from __future__ import annotations

import argparse
import json
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
MARIN_TOKENS_PER_PARAM = 20  # 1x Chinchilla
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
    # the other optimizers' keys (Marin's name -> the analysis' name; the Marin-only ones need a declared axis)
    "momentum": "momentum",
    "decay": "decay",
    "muon_to_adam_lr": "muon_to_adam_lr",
    "scion_to_signum_lr": "scion_to_signum_lr",
    "gamma": "gamma",
    "shampoo_beta": "shampoo_beta",
    "precondition_frequency": "precondition_frequency",
    "block_size": "block_size",
    "preconditioner_lr": "preconditioner_lr",
    "preconditioner_update_probability": "update_probability",
    "update_prob_flat_start": "update_prob_flat_start",
    "muon_epsilon": "muon_epsilon",
    "scion_epsilon": "scion_epsilon",
    "normalize_grads": "normalize_grads",
    "partition_grads_into_blocks": "partition_grads_into_blocks",
}
MARIN_OPTIMIZERS = {"mini": "adam_mini", "soape": "soap"}  # Marin's folder name -> ours (the rest as they are)


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


def marin_optimizer_table(results_root: Path) -> pd.DataFrame:
    """Every optimizer's folder under `results_root` (`<optimizer>/<size>/<chinchilla>/result.json`) as rows
    of one table with an `optimizer` column."""
    folders = sorted(d for d in results_root.iterdir() if d.is_dir() and any(d.glob("*/*/result.json")))
    if not folders:
        raise InputError(f"{results_root}: no <optimizer>/<size>/<chinchilla>/result.json files")
    tables = [marin_table(d).assign(optimizer=MARIN_OPTIMIZERS.get(d.name, d.name)) for d in folders]
    return pd.concat(tables, ignore_index=True)


def marin_table(results_dir: Path) -> pd.DataFrame:
    """The baseline and every ablation of each `<size>/<chinchilla>/result.json` as rows."""
    paths = sorted(results_dir.glob("*/*/result.json"))
    if not paths:
        raise InputError(f"{results_dir}: no <size>/<chinchilla>/result.json files")
    rows = [row for path in paths for row in marin_rows(path)]
    return drop_unswept_gaps(pd.DataFrame(rows), results_dir)


def drop_unswept_gaps(table: pd.DataFrame, results_dir: Path) -> pd.DataFrame:
    """Drop a hyperparameter that some cells' configs lack but that never varies where given (soape's
    `partition_grads_into_blocks`, absent at 1.2b): it carries nothing, and a run table needs every value."""
    gaps = [c for c in MARIN_HPARAMS.values() if c in table and table[c].isna().any()]
    varied = [c for c in gaps if table[c].nunique() > 1]
    if varied:
        raise InputError(f"{results_dir}: {', '.join(varied)} varied in some cells, absent in others")
    return table.drop(columns=gaps)


def marin_rows(path: Path) -> list[dict[str, Any]]:
    """One sweep cell: its scale columns plus the baseline's and each ablation's hparams and loss."""
    result = read_json(path)
    try:
        best, baseline_loss = result["best_config"], result["baseline"]["loss"]
        ablations = result.get("ablations", [])  # some cells list none
        configs = [(best, baseline_loss)]
        configs += [({**best, a["param"]: a["value"]}, a["loss"]) for a in ablations]
        hparams = [{ours: float(config[theirs]) for theirs, ours in MARIN_HPARAMS.items() if theirs in config}
                   for config, _ in configs]  # float: the booleans (normalize_grads) become 0 / 1
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(f"{path}: missing or malformed field {error}") from None
    scale = marin_scale(path)
    return [
        {**scale, **h, "loss": marin_loss(loss), "status": marin_status(loss), "seq_len": MARIN_SEQ_LEN}
        for h, (_, loss) in zip(hparams, configs)
    ]


def marin_scale(path: Path) -> dict[str, Any]:
    """The scale columns of `<size>/<chinchilla>/result.json`: N non-embedding, D = 20 N x chinchilla."""
    size, chinchilla = path.parent.parent.name, path.parent.name
    if size not in MARIN_SHAPES:
        raise InputError(f"{path}: unknown model size {size!r}; known: {', '.join(MARIN_SHAPES)}")
    try:
        multiple = float(chinchilla)
    except ValueError:
        raise InputError(f"{path}: folder {chinchilla!r} is not a Chinchilla multiple") from None
    width, mlp = MARIN_SHAPES[size]
    n_params = MARIN_LAYERS * (3 * width * mlp + 4 * width**2)
    tokens = MARIN_TOKENS_PER_PARAM * n_params * multiple
    return {"scale": f"{size}_x{chinchilla}", "n_params": n_params, "tokens": tokens, "width": width}


def marin_loss(loss: Any) -> float | None:
    """A loss as Marin writes it: a number, null (never run) or the string "NaN" (diverged)."""
    return None if loss is None else float(loss)


def marin_status(loss: Any) -> str:
    """null: an ablation never run (num_left > 0); a non-finite loss: a run that diverged."""
    if loss is None:
        return "missing"
    return "ok" if np.isfinite(float(loss)) else "diverged"


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
    marin = sources.add_parser("marin", help="one optimizer's folder of Marin's Results (e.g. Results/adamw)")
    marin.add_argument("results_dir", type=Path)
    marin_all = sources.add_parser("marin-all", help="Marin's Results folder: every optimizer, optimizer column")
    marin_all.add_argument("results_root", type=Path)
    for sub in (steplaw, marin, marin_all):
        sub.add_argument("--out", type=Path, required=True, help="CSV file to write")
    return parser.parse_args(argv)


def print_own_fit(csv_path: Path, loss: str) -> None:
    fit = steplaw_own_fit(read_steplaw(csv_path), loss)
    print(f"Step Law's own fit on {csv_path} ({STEPLAW_LOSS[loss]!r} column): "
          + "; ".join(f"{k} exponent {e:.3f} [{lo:.3f}, {hi:.3f}]" for k, (e, lo, hi) in fit.items()))


def build_table(args: argparse.Namespace) -> pd.DataFrame:
    if args.source == "steplaw":
        return steplaw_table(args.csv_path, args.loss)
    if args.source == "marin":
        return marin_table(args.results_dir)
    return marin_optimizer_table(args.results_root)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.source == "steplaw-own":
            print_own_fit(args.csv_path, args.loss)
            return 0
        table = build_table(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(f"{args.out}: {len(table)} runs at {table['scale'].nunique()} scales")
    return 0


if __name__ == "__main__":
    sys.exit(main())
