"""Speedups over AdamW on Marin's published optimizer sweeps: optsweep's analysis against the paper's formula.

Source (not redistributed; get the files yourself, then run this script offline): `git clone
https://github.com/marin-community/marin`, folder `experiments/optimizer_sweep/Analysis/Results`, one
`<optimizer>/<size>/<chinchilla>/result.json` per sweep cell (bench/published_tables.py reads them).

Usage:
    python bench/published_speedups.py RESULTS_ROOT --out DIR [--replicates N]

It prints, per optimizer and scale, three speedups (D_eff / D, D_eff the data AdamW needs for the same loss):
- `optsweep`: `optsweep analyze` on the runs table (each cell's incumbent and 1-D ablations, with an `optimizer`
  column), written to DIR; the tuned loss is each cell's best listed run; bootstrap interval and the
  `extrapolated` flag (D_eff beyond AdamW's measured data).
- `optsweep(min)`: optsweep's speedup on each cell's `min_loss` field, the loss the paper's own code used.
- `optsweep(min, AdamW 1-8x)`: the same without AdamW's 16x cells, so its curves see the paper's points.
- `paper`: the formula of Marin's `experiments/optimizer_sweep/Analysis/PhaseII/speedup_estimation.py`,
  re-implemented: per model size, scipy curve_fit of L = alpha * D^-B + beta on AdamW's `min_loss` against
  the Chinchilla multiple D in {1, 2, 4, 8} (start (L_1 - L_8, 0.5, L_8), no bounds), then
  D_eff = ((L - beta) / alpha)^(-1/B) and speedup = D_eff / D.
Then, from DIR/speedup.json, the size laws' predictions at 7B (1x and 8x Chinchilla) and the shared-exponent
loss law (alpha, beta, per-optimizer rho_N and rho_D).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from published_tables import MARIN_OPTIMIZERS, InputError, marin_optimizer_table, marin_scale, read_json
from scipy.optimize import OptimizeWarning, curve_fit

from optsweep.analysis import analyze_table, compute_speedup
from optsweep.axes import declare_axes

REFERENCE = "adamw"
PAPER_MULTIPLES = (1.0, 2.0, 4.0, 8.0)  # the data scales speedup_estimation.py fits AdamW's curve on
# Marin-only hyperparameters have no built-in axis; the booleans are 0 / 1
MARIN_AXES = {"muon_epsilon": "log", "scion_epsilon": "log", "normalize_grads": "linear",
              "partition_grads_into_blocks": "linear"}


def min_loss_table(results_root: Path) -> pd.DataFrame:
    """One row per (optimizer, cell): the cell's `min_loss`, its scale and its Chinchilla multiple."""
    rows = []
    for path in sorted(results_root.glob("*/*/*/result.json")):
        loss = read_json(path).get("min_loss")
        if loss is not None and math.isfinite(float(loss)):
            optimizer = path.parent.parent.parent.name
            rows.append({"optimizer": MARIN_OPTIMIZERS.get(optimizer, optimizer), **marin_scale(path),
                         "chinchilla": float(path.parent.name), "loss": float(loss)})
    if not rows:
        raise InputError(f"{results_root}: no result.json with a min_loss")
    return pd.DataFrame(rows)


def paper_speedups(cells: pd.DataFrame) -> dict[tuple[str, str], float]:
    """The paper's point speedups per (optimizer, scale); NaN where D_eff is undefined (loss below beta)."""
    speedups = {}
    for _, size in cells.groupby("n_params"):
        ours = size[(size["optimizer"] == REFERENCE) & size["chinchilla"].isin(PAPER_MULTIPLES)]
        ours = ours.sort_values("chinchilla")
        if len(ours) < 3:
            continue
        d, loss = ours["chinchilla"].to_numpy(), ours["loss"].to_numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            (alpha, b, beta), _ = curve_fit(_paper_law, d, loss, p0=[loss[0] - loss[-1], 0.5, loss[-1]], maxfev=10000)
        for row in size[size["optimizer"] != REFERENCE].itertuples():
            with np.errstate(invalid="ignore"):
                d_eff = ((row.loss - beta) / alpha) ** (-1.0 / b)
            speedups[(row.optimizer, row.scale)] = float(d_eff / row.chinchilla)
    return speedups


def _paper_law(d: np.ndarray, alpha: float, b: float, beta: float) -> np.ndarray:
    return alpha * d ** (-b) + beta


def optsweep_speedups(table: pd.DataFrame, out_dir: Path) -> dict[str, Any]:
    """`optsweep analyze` on the runs table (written to out_dir/marin.csv); its speedup.json as a dict."""
    declare_axes(MARIN_AXES)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "marin.csv"
    table.to_csv(path, index=False)
    analyze_table(path, out_dir, reference=REFERENCE)
    return json.loads((out_dir / "speedup.json").read_text())


def min_loss_speedups(cells: pd.DataFrame, replicates: int) -> dict[str, Any]:
    """optsweep's speedup (compute_speedup) with each cell's min_loss as its tuned loss."""
    return compute_speedup(cells, REFERENCE, replicates=replicates, source="min_loss table").model_dump(mode="json")


def paper_points(cells: pd.DataFrame) -> pd.DataFrame:
    """The min_loss cells without AdamW's 16x ones: its curves on the paper's points (D in {1, 2, 4, 8})."""
    return cells[(cells["optimizer"] != REFERENCE) | cells["chinchilla"].isin(PAPER_MULTIPLES)]


def speedup_rows(columns: dict[str, dict[str, Any]], paper: dict[tuple[str, str], float]) -> list[str]:
    """One line per (optimizer, scale) that any column has: each of optsweep's `columns` (heading -> its
    speedup document), then the paper's formula."""
    by_column = [{(s["optimizer"], s["scale"]): s for s in result["speedups"]} for result in columns.values()]
    keys = set(paper).union(*by_column)
    lines = ["| optimizer | scale | " + " | ".join(f"{name} [95%]" for name in columns) + " | paper formula |",
             "|---|---|" + "---|" * (len(columns) + 1)]
    for key in sorted(keys, key=_order):
        cells = " | ".join(_speedup(by_key.get(key)) for by_key in by_column)
        lines.append(f"| {key[0]} | {key[1]} | {cells} | {_number(paper.get(key))} |")
    return lines


def _order(key: tuple[str, str]) -> tuple[str, float, float]:
    size, multiple = key[1].split("_x")
    return key[0], {"130m": 1, "300m": 2, "520m": 3, "1.2b": 4}.get(size, 9), float(multiple)


def _speedup(s: dict[str, Any] | None) -> str:
    if s is None:
        return "-"
    flag = " (extrap.)" if s["extrapolated"] else ""
    return f"{_number(s['speedup'])} [{_number(s['interval'][0])}, {_number(s['interval'][1])}]{flag}"


def _number(value: float | None) -> str:
    return "inf" if value is None else ("n/a" if math.isnan(value) else f"{value:.3g}")


def law_rows(result: dict[str, Any]) -> list[str]:
    """The size laws' predictions at each target (7B by default), with intervals and the extrapolated flag."""
    lines = ["| optimizer | per doubling of N [95%] | 7B x1 [95%] | 7B x8 [95%] | dof | lack of fit |",
             "|---|---|---|---|---|---|"]
    for law in result["size_laws"]:
        cells = [f"{_number(p['speedup'])} [{_number(p['interval'][0])}, {_number(p['interval'][1])}]"
                 + (" (extrap.)" if p["extrapolated"] else "") for p in law["predictions"]]
        doubling = law["per_doubling"]
        lines.append(f"| {law['optimizer']} | {_estimate(doubling)} | {' | '.join(cells)} | {law['dof']} | "
                     f"{law['lack_of_fit']:.3g} |")
    return lines


def shared_rows(result: dict[str, Any]) -> list[str]:
    """The shared-exponent law: its exponents, then rho_N and rho_D per optimizer."""
    law = result.get("shared_law")
    if law is None:
        return [f"no shared law: {next((s for s in result['skipped'] if s.startswith('shared law')), '?')}"]
    lines = [f"{law['form']} over {law['points']} tuned losses: E {_estimate(law['E'])}, A {_estimate(law['A'])}, "
             f"alpha {_estimate(law['alpha'])}, B {_estimate(law['B'])}, beta {_estimate(law['beta'])}; "
             f"residual se {law['residual_se']:.3g}, lack of fit {law['lack_of_fit']:.3g}", "",
             "| optimizer | rho_N [95%] | rho_D [95%] |", "|---|---|---|"]
    for optimizer in law["rho_N"]:
        lines.append(f"| {optimizer} | {_estimate(law['rho_N'][optimizer])} | {_estimate(law['rho_D'][optimizer])} |")
    return lines


def _estimate(e: dict[str, Any]) -> str:
    return f"{_number(e['estimate'])} [{_number(e['interval'][0])}, {_number(e['interval'][1])}]"


def unfinished_cells(table: pd.DataFrame) -> list[str]:
    """The (optimizer, scale) cells of the runs table without a finished run: no tuned loss, no speedup."""
    finished = table[table["status"] == "ok"].groupby(["optimizer", "scale"]).size()
    cells = table.groupby(["optimizer", "scale"]).size()
    return [f"optimizer {o} scale {s}: no finished run listed (only a min_loss)"
            for o, s in cells.index.difference(finished.index)]


def report(results_root: Path, out_dir: Path, replicates: int) -> list[str]:
    table = marin_optimizer_table(results_root)
    cells = min_loss_table(results_root)
    ours = optsweep_speedups(table, out_dir)
    on_min = min_loss_speedups(cells, replicates)
    columns = {"optsweep": ours, "optsweep(min)": on_min,
               "optsweep(min, AdamW 1-8x)": min_loss_speedups(paper_points(cells), replicates)}
    left_out = [*ours["skipped"], *unfinished_cells(table)] or ["none"]
    lines = [f"{len(table)} rows, {table['optimizer'].nunique()} optimizers; {len(cells)} cells with a min_loss", "",
             "## Speedup over AdamW", "", *speedup_rows(columns, paper_speedups(cells)), "",
             "## Size laws (optsweep, runs table)", "", *law_rows(ours), "",
             "## Size laws (optsweep, min_loss)", "", *law_rows(on_min), "",
             "## Shared-exponent law (optsweep, runs table)", "", *shared_rows(ours), "",
             "## Shared-exponent law (optsweep, min_loss)", "", *shared_rows(on_min), "",
             "## Left out (optsweep, runs table)", "", *(f"- {s}" for s in left_out)]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_root", type=Path, help="Marin's experiments/optimizer_sweep/Analysis/Results")
    parser.add_argument("--out", type=Path, required=True, help="folder for the runs table and optsweep's analysis")
    parser.add_argument("--replicates", type=int, default=1000, help="bootstrap replicates of the min_loss speedups")
    args = parser.parse_args(argv)
    try:
        print("\n".join(report(args.results_root, args.out, args.replicates)))
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
