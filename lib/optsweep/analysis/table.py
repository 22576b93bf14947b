"""Run tables: one row per trained run, the input of every analysis.

A run table has the columns `scale` (a name), `n_params` (non-embedding N), `tokens` (D), `width`, one
column per hyperparameter that is present (any name in `hparam_names()`: every built-in optimizer's and any
declared by a sweep result, see `optsweep.axes`) and `loss` (non-finite = diverged). Optional: `seed`
(several seeds of one config measure the noise), `status` ("diverged" rows count as diverged; "failed",
"missing" and "skipped" rows are missing data and dropped: a fault is not a result), `phase` ("phase1"
rows decide sensitivity when present), `steps` (training duration; `tokens` stands in for it when absent),
`seq_len` (per row: batch sizes are then compared in tokens per step). `tokens` and `steps` may vary
between the rows of a scale (a budget rounded to whole steps of each batch size): the scale's D and
duration are their medians. An empty loss must say why in `status`. Any other column is ignored, so a
table exported from another codebase works as it is.

Runs that blew up but finished at a finite loss are marked by `mark_blown_up` with the same rule the
trainer uses (`optsweep.train.divergence.blown_up`), so they never enter an optimum fit.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from ..axes import axis_of, declare_axes, known_hparams
from ..params.settings import ParamsError
from ..params.study import ALL_HPARAMS, SCALE_NAME
from ..results.documents import SweepResult, SweepRuns
from ..train.divergence import DEFAULT_RISE, blown_up

REQUIRED = ("scale", "n_params", "tokens", "width", "loss")
SCALE_COLUMNS = ("n_params", "tokens", "width", "steps")
ONE_PER_SCALE = ("n_params", "width")  # tokens and steps may vary per row (budgets rounded per batch size)
OPTIONAL = ("seed", "status", "phase", "steps", "seq_len")
DIVERGED_STATUSES = ("diverged", "blown_up")
MISSING_STATUSES = ("failed", "missing", "skipped")  # never trained, or a fault: missing data, not a result
BLOWN_UP = "blown_up"
# Where each hyperparameter's values make sense (the natural axes of the analysis need them).
DOMAINS: dict[str, tuple[str, Callable[[pd.Series], pd.Series]]] = {
    "lr": ("> 0", lambda v: v > 0),
    "eps": ("> 0", lambda v: v > 0),
    "batch_size": ("> 0", lambda v: v > 0),
    "warmup": (">= 0", lambda v: v >= 0),
    "beta1": ("in [0, 1)", lambda v: (v >= 0) & (v < 1)),
    "beta2": ("in [0, 1)", lambda v: (v >= 0) & (v < 1)),
    "min_lr_ratio": ("in [0, 1]", lambda v: (v >= 0) & (v <= 1)),
    "weight_decay": (">= 0", lambda v: v >= 0),
    "clip": (">= 0", lambda v: v >= 0),
}
# Any other hyperparameter: where its natural axis is defined (a linear one takes any finite value).
AXIS_DOMAINS: dict[str, tuple[str, Callable[[pd.Series], pd.Series]]] = {
    "log": ("> 0", lambda v: v > 0),
    "log1p": (">= 0", lambda v: v >= 0),
    "log1m": ("in [0, 1)", lambda v: (v >= 0) & (v < 1)),
    "linear": ("a finite number", np.isfinite),
}


def hparam_names() -> list[str]:
    """Every hyperparameter a runs table may have a column for, in the order the analysis reports them:
    AdamW's (and batch_size) in the study's order, then the other built-in optimizers' and the declared ones."""
    return list(dict.fromkeys([*ALL_HPARAMS, *known_hparams()]))


def domain_of(hparam: str) -> tuple[str, Callable[[pd.Series], pd.Series]]:
    return DOMAINS.get(hparam) or AXIS_DOMAINS[axis_of(hparam)]


def load_runs_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet run table and validate it (one-line `ParamsError` naming file and column)."""
    return validate_runs_table(read_runs_table(path), source=str(path))


def read_runs_table(path: str | Path) -> pd.DataFrame:
    """A CSV or Parquet run table as it is in the file, not yet validated."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: runs table not found")
    readers = {".csv": pd.read_csv, ".parquet": pd.read_parquet, ".pq": pd.read_parquet}
    suffix = path.suffix.lower()
    if suffix not in readers:
        raise ParamsError(f"{path}: unknown table format {suffix or '(none)'!r}; use .csv or .parquet")
    try:
        frame = readers[suffix](path)
    except (ValueError, OSError) as error:  # pandas' and pyarrow's parse errors are ValueErrors
        raise ParamsError(f"{path}: not a readable {suffix[1:]} table ({str(error).splitlines()[0]})") from None
    return frame


def split_by_optimizer(frame: pd.DataFrame, source: str = "runs table") -> dict[str, pd.DataFrame]:
    """A table with an `optimizer` column as one validated run table per optimizer (sorted by name).

    Names become folder names, so they are letters, digits, `_`, `.` and `-`. A hyperparameter column that
    is empty in every row of an optimizer belongs to another optimizer and is dropped from its table.
    """
    names = frame["optimizer"].astype("string").str.strip()
    _fail_if(~names.str.fullmatch(SCALE_NAME.pattern).fillna(False).astype(bool), frame["optimizer"], source,
             "optimizer", "an optimizer name is letters, digits, _ . - (it names a folder)")
    tables = {}
    for name, rows in frame.groupby(names, sort=True):
        others = [h for h in hparam_names() if h in rows.columns and rows[h].isna().all()]
        tables[str(name)] = validate_runs_table(rows.drop(columns=others), source=f"{source} (optimizer {name})")
    return tables


def validate_runs_table(frame: pd.DataFrame, source: str = "runs table") -> pd.DataFrame:
    """Check and normalise a run table: known columns only, numbers as floats, diverged runs as NaN loss.

    A hyperparameter column with one value in every row was not swept: it is kept as a fixed value (see
    `fixed_hparams`) as long as some other hyperparameter varies; when none varies the table is an error.
    """
    for column in REQUIRED:
        if column not in frame.columns:
            raise ParamsError(
                f"{source}: missing column {column!r}; a runs table needs {', '.join(REQUIRED)} "
                f"and a column per hyperparameter ({', '.join(hparam_names())})"
            )
    hparams = [h for h in hparam_names() if h in frame.columns]
    if not hparams:
        raise ParamsError(f"{source}: no hyperparameter column; expected one or more of {', '.join(hparam_names())}")
    keep = ["scale", *SCALE_COLUMNS, *hparams, "loss", *OPTIONAL]
    table = frame[[c for c in dict.fromkeys(keep) if c in frame.columns]].reset_index(drop=True)
    for column in ("status", "phase", "seed"):  # labels
        if column in table.columns:
            table[column] = table[column].astype("string").fillna("")
    if "status" in table.columns:
        table = table[~table["status"].isin(MISSING_STATUSES)].reset_index(drop=True)

    names = table["scale"].astype("string").str.strip()
    _fail_if(names.isna() | (names == ""), table["scale"], source, "scale", "empty scale name")
    table["scale"] = names.astype(str)
    for column in [c for c in table.columns if c not in ("scale", "status", "phase", "seed")]:
        table[column] = _numeric(table[column], column, source)
    for column in [c for c in SCALE_COLUMNS if c in table.columns and c != "steps"]:
        positive = np.isfinite(table[column]) & (table[column] > 0)
        _fail_if(~positive, table[column], source, column, "needs a positive number")
    for h in hparams:
        _fail_if(~np.isfinite(table[h]), table[h], source, h, "every run needs a finite value")
        allowed, inside = domain_of(h)
        _fail_if(~inside(table[h]), table[h], source, h, f"allowed: {allowed}")

    _check_empty_losses(table, source)
    if "status" in table.columns:
        table.loc[table["status"].isin(DIVERGED_STATUSES), "loss"] = np.nan
    table.loc[~np.isfinite(table["loss"]), "loss"] = np.nan
    if "seq_len" in table.columns:
        table = _batch_size_in_tokens(table, source)

    _check_one_value_per_scale(table, source)
    _check_scales(table, source)
    _check_something_swept(table, hparams, source)
    return table


def _fail_if(bad: pd.Series, values: pd.Series, source: str, column: str, message: str) -> None:
    """One line naming the column, the first bad data row (1-based, header not counted) and its value."""
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy(dtype=bool))[0])
        value = values.iloc[row]
        value = value.item() if isinstance(value, np.generic) else value
        raise ParamsError(f"{source}: column {column!r}: data row {row + 1} has {value!r}: {message}")


def _check_empty_losses(table: pd.DataFrame, source: str) -> None:
    """An empty loss is a diverged run or missing data, and only the table knows which: its status must say."""
    status = table["status"] if "status" in table.columns else pd.Series("", index=table.index)
    unexplained = table["loss"].isna() & ~status.isin(DIVERGED_STATUSES)
    if unexplained.any():
        rows = [str(i + 1) for i in np.flatnonzero(unexplained.to_numpy())]
        listed = ", ".join(rows[:5]) + (f" and {len(rows) - 5} more" if len(rows) > 5 else "")
        raise ParamsError(
            f"{source}: column 'loss': data row{'s' if len(rows) > 1 else ''} {listed} empty without a status; "
            "set column 'status' to 'diverged' (a result) or 'missing' (skipped)"
        )


def _batch_size_in_tokens(table: pd.DataFrame, source: str) -> pd.DataFrame:
    """With a per-row sequence length, batch sizes are compared in tokens per step (seq_len is then dropped,
    so validating the table again leaves it as it is)."""
    positive = np.isfinite(table["seq_len"]) & (table["seq_len"] > 0)
    _fail_if(~positive, table["seq_len"], source, "seq_len", "needs a positive number")
    table = table.copy()
    if "batch_size" in table.columns:
        table["batch_size"] = table["batch_size"] * table["seq_len"]
        table.attrs["batch_size_unit"] = "tokens"
    return table.drop(columns="seq_len")


def mark_blown_up(table: pd.DataFrame, rise: float = DEFAULT_RISE) -> pd.DataFrame:
    """The table with every finished run more than `rise` above its scale's best finished loss marked
    diverged (loss NaN, status "blown_up"): the trainer's divergence rule, applied to any table."""
    table = table.copy()
    if "status" not in table.columns:
        table["status"] = pd.Series("ok", index=table.index, dtype="string")
    for _, rows in table.groupby("scale", sort=False):
        marked = rows.index[blown_up(rows["loss"].to_numpy(float), float(rows["loss"].min()), rise)]
        table.loc[marked, ["loss", "status"]] = [np.nan, BLOWN_UP]
    return table


def blown_up_counts(table: pd.DataFrame) -> dict[str, int]:
    """How many rows of each scale the divergence rule marked (every scale listed, zeros included)."""
    marked = table["status"] == BLOWN_UP if "status" in table.columns else pd.Series(False, index=table.index)
    return {str(scale): int(n) for scale, n in marked.groupby(table["scale"], sort=False).sum().items()}


def _numeric(column: pd.Series, name: str, source: str) -> pd.Series:
    """The column as floats; text that is not a number is an error naming the row."""
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        return column.astype(float)
    numbers = pd.to_numeric(column, errors="coerce").astype(float)
    text = column.astype("string").str.strip()
    blank_or_special = column.isna() | text.str.lower().isin(["", "nan", "inf", "-inf"])
    _fail_if(numbers.isna() & ~blank_or_special, column, source, name, "not a number")
    return numbers


def _check_one_value_per_scale(table: pd.DataFrame, source: str) -> None:
    for column in [c for c in ONE_PER_SCALE if c in table.columns]:
        counts = table.groupby("scale")[column].nunique()
        if (counts > 1).any():
            scale = counts[counts > 1].index[0]
            first, second = sorted(table.loc[table["scale"] == scale, column].unique())[:2]
            raise ParamsError(
                f"{source}: column {column!r}: scale {scale!r} has several values "
                f"({first:.10g}, {second:.10g}, ...); one per scale"
            )


def _check_scales(table: pd.DataFrame, source: str) -> None:
    scales = table["scale"].unique()
    if len(scales) < 2:
        found = f"{scales[0]!r}" if len(scales) else "none"
        raise ParamsError(f"{source}: column 'scale': needs runs at two or more scales to compare, found {found}")
    finite = table["loss"].notna().groupby(table["scale"]).any()
    if not finite.all():
        scale = finite[~finite].index[0]
        raise ParamsError(
            f"{source}: column 'loss': every run of scale {scale!r} diverged; drop its rows or rerun it"
        )


def _check_something_swept(table: pd.DataFrame, hparams: list[str], source: str) -> None:
    if any(table[h].nunique() > 1 for h in hparams):
        return
    names = ", ".join(repr(h) for h in hparams)
    which = f"column {names} has" if len(hparams) == 1 else f"columns {names} each have"
    raise ParamsError(
        f"{source}: {which} a single value in every row: no hyperparameter was swept, "
        "so there is nothing to analyse"
    )


def hparam_columns(table: pd.DataFrame) -> list[str]:
    return [h for h in hparam_names() if h in table.columns]


def fixed_hparams(table: pd.DataFrame) -> dict[str, float]:
    """Hyperparameters with one value in every row: never swept, reported as fixed, never judged."""
    return {h: float(table[h].iloc[0]) for h in hparam_columns(table) if table[h].nunique() == 1}


def swept_hparams(table: pd.DataFrame) -> list[str]:
    return [h for h in hparam_columns(table) if table[h].nunique() > 1]


def sensitivity_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows that decide sensitivity: phase-1 runs when the table marks phases, else every run."""
    if "phase" in table.columns and (table["phase"] == "phase1").any():
        return table[table["phase"] == "phase1"].reset_index(drop=True)
    return table


def config_losses(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (scale, config): its loss (NaN = diverged) and how many runs it has.

    Configs are compared under common random numbers: a config's loss is its mean over the seeds that every
    config of the scale was run on (else over the scale's most common seed), so a config also run on extra
    seeds to measure noise is not compared by a mean against the others' single seed. A config with none of
    those seeds gets its mean over all its seeds.
    """
    keys = ["scale", *hparam_columns(table)]
    counted = table[_comparable_runs(table, keys)] if "seed" in table.columns else table
    configs = (
        counted.assign(diverged=counted["loss"].isna())
        .groupby(keys, sort=False)
        .agg(loss=("loss", "mean"), diverged=("diverged", "any"))
    )
    configs.loc[configs["diverged"], "loss"] = np.nan
    configs["runs"] = table.groupby(keys, sort=False).size()
    return configs.drop(columns="diverged").reset_index()


def _comparable_runs(table: pd.DataFrame, keys: list[str]) -> pd.Series:
    if table["seed"].nunique() == 1:
        return pd.Series(True, index=table.index)
    comparable = pd.Series(False, index=table.index)
    for _, rows in table.groupby("scale", sort=False):
        shared = set.intersection(*(set(seeds) for seeds in rows.groupby(keys[1:], sort=False)["seed"].unique()))
        on_shared = rows["seed"].isin(shared or {rows["seed"].mode().iloc[0]})
        has_shared = on_shared.groupby([rows[k] for k in keys[1:]], sort=False).transform("any")
        comparable[rows.index] = on_shared | ~has_shared
    return comparable


def scales_frame(table: pd.DataFrame, configs: pd.DataFrame) -> pd.DataFrame:
    """One row per scale (index = name): n_params, tokens, width, duration, shortest (the fewest steps of its
    runs, NaN when the table has no steps), best_loss, runs, blown_up. `configs` is `config_losses(table)`;
    tokens and duration are the medians over the scale's rows."""
    grouped = table.groupby("scale", sort=False)
    scales = grouped[["n_params", "width"]].first()
    scales["tokens"] = grouped["tokens"].median()
    scales["duration"] = grouped["steps"].median() if "steps" in table.columns else scales["tokens"]
    scales["duration"] = scales["duration"].where(np.isfinite(scales["duration"]), scales["tokens"])
    scales["shortest"] = grouped["steps"].min() if "steps" in table.columns else np.nan
    scales["best_loss"] = configs.groupby("scale", sort=False)["loss"].min()
    scales["runs"] = grouped.size()
    scales["blown_up"] = pd.Series(blown_up_counts(table))
    return scales


def seed_noise(table: pd.DataFrame) -> dict[str, Any] | None:
    """How much the loss moves with the seed, or None when no config was run on more than one seed.

    `std`: the loss of one run about its config's mean, pooled over configs with several seeds.
    `paired_std`: under common random numbers, the std of the loss difference between two configs run on
    the same seed (config and seed effects removed, two-way), the noise that matters when configs share
    seeds; None when no two configs share two seeds.
    """
    keys = ["scale", *hparam_columns(table)]
    finite = table[table["loss"].notna()]
    groups = finite.groupby(keys, sort=False)["loss"].agg(["var", "size"])
    groups = groups[groups["size"] >= 2]
    if groups.empty:
        return None
    dof = int((groups["size"] - 1).sum())
    pooled = float(((groups["size"] - 1) * groups["var"]).sum() / dof)
    return {
        "std": pooled**0.5,
        "paired_std": _paired_std(finite) if "seed" in table.columns else None,
        "configs": len(groups), "runs": int(groups["size"].sum()), "dof": dof,
    }


def _paired_std(finite: pd.DataFrame) -> float | None:
    """sqrt(2) x the residual std of loss = config effect + seed effect + noise, on the blocks of configs x
    seeds that were all run (pooled over scales)."""
    squares, dof = 0.0, 0
    for _, rows in finite.groupby("scale", sort=False):
        block = rows.pivot_table(index=hparam_columns(rows), columns="seed", values="loss", aggfunc="mean")
        block = block[block.notna().sum(axis=1) >= 2]
        block = block.loc[:, block.notna().all(axis=0)].to_numpy()
        if block.shape[0] < 2 or block.shape[1] < 2:
            continue
        residual = block - block.mean(axis=1, keepdims=True) - block.mean(axis=0, keepdims=True) + block.mean()
        squares += float((residual**2).sum())
        dof += (block.shape[0] - 1) * (block.shape[1] - 1)
    return math.sqrt(2 * squares / dof) if dof else None


def runs_table_from_sweeps(sweeps: Sequence[SweepResult | SweepRuns]) -> pd.DataFrame:
    """A run table from our sweep results (results/sweeps/*.json, results/law_sweeps/*.json, read with
    `read_document`), or from any sweep's `SweepRuns`.

    Every trained run is a row; skipped runs (never trained) and failed runs (a fault, missing data) are
    dropped and diverged runs have a NaN loss. A run listed twice (same key) is kept once. lr is the
    effective lr the run trained with. The axes each sweep's optimizer declared are adopted (`declare_axes`),
    so a user optimizer's hyperparameters are analysed on their own axes.
    """
    rows: list[dict[str, object]] = []
    seen: set[tuple[str, str]] = set()
    for sweep in sweeps:
        declare_axes(sweep.axes)
    names = set(hparam_names())
    for sweep in sweeps:
        scale = sweep.scale
        for run in sweep.runs:
            status = str(run.status)
            if status in MISSING_STATUSES:
                continue
            key = (str(scale["name"]), run.key)
            if key in seen:
                continue
            seen.add(key)
            loss = run.loss if status == "ok" else None
            rows.append(
                {
                    "scale": scale["name"],
                    "n_params": scale["n_params"],
                    "tokens": scale["tokens"],
                    "width": scale["width"],
                    "steps": scale.get("steps"),
                    **{h: v for h, v in run.hparams.items() if h in names},
                    "loss": np.nan if loss is None else loss,
                    "seed": run.seed,
                    "status": status,
                    "phase": sweep.phase,
                }
            )
    if not rows:
        raise ParamsError("sweeps: no trained runs to analyse")
    return validate_runs_table(pd.DataFrame(rows), source="sweeps")
