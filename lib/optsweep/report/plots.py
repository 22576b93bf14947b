"""Seaborn figures of the study's results. Each function takes result tables and returns a Figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import matplotlib.ticker as ticker
import numpy as np
import pandas as pd
import seaborn as sns

from ..axes import axis_of
from ..results.documents import SweepResult, as_json

sns.set_theme(style="whitegrid", context="notebook")


def _style_axis(ax: plt.Axes, hparam: str, values: list[float]) -> None:
    if axis_of(hparam) in ("log", "log1p"):  # spread over orders of magnitude
        ax.set_xscale("log")
        # ticks at the grid values (thinned to about six), not matplotlib's minor labels, which overlap when a
        # grid spans less than a few decades
        ticks = sorted(set(values))[:: max(1, -(-len(set(values)) // 6))]
        ax.xaxis.set_major_locator(ticker.FixedLocator(ticks))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:.2g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.tick_params(axis="x", labelrotation=30)
    ax.set_title(hparam)
    ax.set_xlabel("")


def loss_slices(frame: pd.DataFrame, value: str = "delta_loss") -> plt.Figure:
    """One panel per hyperparameter, a line per scale; diverged runs marked with x above the curves."""
    hparams = list(dict.fromkeys(frame["hparam"]))
    columns = min(4, len(hparams))
    rows = -(-len(hparams) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.2 * rows), squeeze=False)
    palette = dict(zip(dict.fromkeys(frame["scale"]), sns.color_palette(n_colors=frame["scale"].nunique())))
    for ax, hparam in zip(axes.flat, hparams):
        panel = frame[frame["hparam"] == hparam].sort_values("value")
        finite = panel[panel["status"] == "ok"]
        sns.lineplot(data=finite, x="value", y=value, hue="scale", palette=palette, marker="o", ax=ax, legend=False)
        diverged = panel[panel["status"] == "diverged"]
        if not diverged.empty:
            top = finite[value].max() if not finite.empty else 0.0
            ax.scatter(diverged["value"], [top] * len(diverged), marker="x", s=60, color="black", zorder=5)
        _style_axis(ax, hparam, panel["value"].tolist())
        ax.set_ylabel("loss - best loss at the scale" if value == "delta_loss" else value)
    for ax in axes.flat[len(hparams):]:
        ax.set_visible(False)
    handles = [plt.Line2D([], [], color=c, marker="o", label=s) for s, c in palette.items()]
    handles.append(plt.Line2D([], [], color="black", marker="x", linestyle="", label="diverged"))
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), bbox_to_anchor=(0.5, 1.04), frameon=False)
    fig.tight_layout()
    return fig


def trajectory(sweep: SweepResult) -> plt.Figure:
    """Held-out loss of the incumbent after each coordinate step of the descent."""
    steps = pd.DataFrame([as_json(step) for step in sweep.trajectory], columns=["pass", "hparam", "baseline", "loss"])
    steps["step"] = range(1, len(steps) + 1)
    fig, ax = plt.subplots(figsize=(7, 3))
    sns.lineplot(data=steps, x="step", y="loss", hue="pass", marker="o", palette="crest", ax=ax)
    for _, row in steps.iterrows():
        ax.annotate(row["hparam"], (row["step"], row["loss"]), fontsize=7, rotation=45, xytext=(2, 4),
                    textcoords="offset points")
    ax.set_xlabel("coordinate step")
    ax.set_ylabel("incumbent held-out loss")
    fig.tight_layout()
    return fig


def law_points(points: pd.DataFrame, fitted: pd.DataFrame, hparam: str) -> plt.Figure:
    """Optima per scale against N (left, colour: D) and against D (right, colour: N), each with the fitted law
    and its 95% interval (`fitted`: `report.law_curves`, along N at each D and along D at each N)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    # an optimum at a grid edge is a bound (the true one lies beyond it): its own marker
    where = points["edge"].fillna("inside the grid") if "edge" in points.columns else None
    panels = ((axes[0], "N", "n_params", "tokens", "N (non-embedding parameters)", "D (tokens)"),
              (axes[1], "D", "tokens", "n_params", "D (tokens)", "N (non-emb.)"))
    for ax, along, x, held, x_label, held_label in panels:
        values = sorted(points[held].unique())
        palette = dict(zip(values, sns.color_palette("viridis", len(values))))
        for value, line in fitted[fitted["along"] == along].groupby(held):
            color = palette.get(value, "grey")
            ax.plot(line[x], line["estimate"], color=color, lw=1.5)
            ax.fill_between(line[x], line["lower"], line["upper"], color=color, alpha=0.15)
        labels = points[held].map(lambda v: f"{v:.3g}")  # the legend names each D or N to 3 digits
        sns.scatterplot(data=points, x=x, y="value", hue=labels, palette={f"{v:.3g}": c for v, c in palette.items()},
                        style=where, s=70, ax=ax, zorder=5)
        ax.set_xscale("log")
        ax.set_yscale("log" if axis_of(hparam) in ("log", "log1p") else "linear")
        ax.set_xlabel(x_label)
        ax.legend(title=held_label, fontsize=8)
    axes[0].set_ylabel(f"optimal {hparam}")
    fig.suptitle(f"{hparam}: optimum per scale, fitted law and its 95% interval")
    fig.tight_layout()
    return fig


def eval_curves(sweep: SweepResult) -> plt.Figure:
    """Held-out loss during training: every run of the sweep in grey, the best one in red."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for run in sweep.runs:
        curve = (run.result or {}).get("eval_curve") or []  # the trainer's result, as it returned it
        if curve:
            is_best = run.hparams == sweep.best and run.seed == sweep.provenance.recorded("seed")
            steps, losses = zip(*curve)
            ax.plot(steps, losses, color="crimson" if is_best else "lightgrey", lw=2 if is_best else 0.8,
                    zorder=3 if is_best else 2, label="best" if is_best else None)
    ax.set_xlabel("step")
    ax.set_ylabel("held-out loss")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    return fig


def speedups(points: pd.DataFrame, reference: str = "adamw") -> plt.Figure:
    """Speedup over the reference against model size (left) and data (right), one hue per optimizer, its
    interval as an error bar (dashed to the top: unbounded above), hollow where D_eff was extrapolated, and
    the 1x line. Points of one scale are spread a little along x so their bars do not hide each other."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    optimizers = list(dict.fromkeys(points["optimizer"]))
    palette = dict(zip(optimizers, sns.color_palette(n_colors=len(optimizers))))
    top = 1.1 * float(np.nanmax([*points["high"], *points["speedup"], 1.0]))  # where unbounded bars end
    for ax, x, label in ((axes[0], "n_params", "N (non-embedding parameters)"), (axes[1], "tokens", "D (tokens)")):
        for i, (optimizer, rows) in enumerate(points.groupby("optimizer", sort=False)):
            spread = rows[x] * 1.04 ** (i - (len(optimizers) - 1) / 2)
            color = palette[optimizer]
            bounded = rows["high"].notna()
            ax.vlines(spread[bounded], rows["low"][bounded], rows["high"][bounded], color=color, lw=1.5)
            ax.vlines(spread[~bounded], rows["low"][~bounded], top, color=color, lw=1.5, linestyles="dashed")
            for extrapolated, face in ((False, color), (True, "white")):
                chosen = rows["extrapolated"] == extrapolated
                ax.scatter(spread[chosen], rows["speedup"][chosen], s=55, color=face, edgecolors=color, zorder=5)
        ax.axhline(1.0, color="black", lw=1, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel(label)
    axes[0].set_ylabel(f"speedup over tuned {reference} (D_eff / D)")
    handles = [plt.Line2D([], [], color=c, marker="o", label=o) for o, c in palette.items()]
    handles.append(plt.Line2D([], [], color="grey", marker="o", markerfacecolor="white", linestyle="",
                              label="D_eff extrapolated"))
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), bbox_to_anchor=(0.5, 1.06), frameon=False)
    fig.tight_layout()
    return fig


def reference_curves(curves: pd.DataFrame, tuned: pd.DataFrame, reference: str = "adamw") -> plt.Figure:
    """Per model size: the reference's tuned losses against data with its fitted L(D) = a D^-b + c, and each
    other optimizer's tuned loss at the data it trained on (its speedup is how far right of it the curve
    reaches the same loss; below its asymptote c it never does). `curves`: n_params, tokens, loss (the fitted
    line), c; `tuned`: optimizer, n_params, tokens, loss."""
    sizes = sorted(curves["n_params"].unique())
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 3.8), squeeze=False)
    optimizers = list(dict.fromkeys(tuned["optimizer"]))
    palette = dict(zip(optimizers, sns.color_palette(n_colors=len(optimizers))))
    palette[reference] = "black"
    for ax, n_params in zip(axes.flat, sizes):
        line = curves[curves["n_params"] == n_params]
        ax.plot(line["tokens"], line["loss"], color="black", lw=1.2, label=f"{reference}: fitted L(D)")
        ax.axhline(line["c"].iloc[0], color="grey", lw=1, ls=":", label="its asymptote c")
        points = tuned[tuned["n_params"] == n_params]
        sns.scatterplot(data=points, x="tokens", y="loss", hue="optimizer", palette=palette, s=60, ax=ax, zorder=5)
        ax.set_xscale("log")
        ax.set_title(f"N = {n_params:.3g}")
        ax.set_xlabel("D (tokens)")
        ax.set_ylabel("tuned held-out loss")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
