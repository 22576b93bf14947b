# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Speedup of other optimizers over a tuned AdamW
# Every optimizer was tuned by the same coordinate descent at the same scales. Per model size, AdamW's
# tuned loss is fitted against data, L(D) = a * D^-b + c; an optimizer's speedup at a scale is the data
# AdamW needs to reach its tuned loss, D_eff, over the data it used: speedup = D_eff / D, with a bootstrap
# interval, flagged *extrapolated* when D_eff lies outside the data AdamW was run on. The compute and
# wall-clock speedups weigh D_eff and D by each optimizer's measured FLOPs per token and tokens per second:
# (AdamW's FLOPs per token x D_eff) / (the optimizer's x D), and the same with seconds per token. The
# intervals rest on the loss noise of one run: `analysis.speedup_noise` when set, else each optimizer's
# measured noise, at least `analysis.speedup_noise_floor`; every curve and speedup names its source. The
# talk's claims (no speedup above 1.4x, the speedup shrinks with model size, optimal hyperparameters do not
# transfer between optimizers) are judged per optimizer with their margins and the noise behind them; a claim
# that could not be judged is listed with the reason.

# %% tags=["parameters"]
params_file = ""  # default: the active params/study.yaml
replicates = 1000  # bootstrap replicates of every interval

# %%
import matplotlib.pyplot as plt
import seaborn as sns
from IPython.display import Markdown, display

from optsweep.analysis import speedup_from_sweeps
from optsweep.analysis.speedup import measured_relative_noise
from optsweep.params.paths import enter_root
from optsweep.params.settings import load_params
from optsweep.report import styled
from optsweep.report.speedup_tables import (
    budgets_frame,
    curve_points_frame,
    curves_frame,
    predictions_frame,
    speedups_frame,
    transfers_frame,
    tuned_points_frame,
    unjudged_frame,
    verdicts_frame,
)
from optsweep.results.documents import SensitivityResult, SweepResult, read_document, sweeps_origin

paths = enter_root()
params = load_params(params_file or paths.params)
reference = params.study.optimizer
scales = {"phase1": list(params.scales), "law": list(params.law_scales)}


def finished_sweeps(study) -> list[SweepResult]:
    """One optimizer's sweep results of both phases, at the params' scales (files not there yet are left out)."""
    return [read_document(study.sweep(scale, phase), SweepResult)
            for phase, names in scales.items() for scale in names if study.sweep(scale, phase).is_file()]


studies = {reference: paths, **{name: paths.of_optimizer(name) for name in params.optimizers}}
sweeps = {name: finished_sweeps(study) for name, study in studies.items()}
# The run noise each optimizer's own sensitivity analysis measured (seeds, surface scatter) sets its intervals.
relative_noise = {name: measured_relative_noise(read_document(study.sensitivity, SensitivityResult))
                  for name, study in studies.items() if study.sensitivity.is_file()}
origin = sweeps_origin([sweep for results in sweeps.values() for sweep in results])
origin["sweeps"] = {name: [sweep.scale["name"] for sweep in results] for name, results in sweeps.items()}
# analysis.speedup_noise, its floor and analysis.speedup_targets (where the size laws predict) decide the rest.
result = speedup_from_sweeps(sweeps, reference, replicates=replicates,
                             **params.analysis.speedup_options(relative_noise)).stamped(params.params_hash(), **origin)
result.write(paths.speedup)
if result.skipped:
    display(Markdown("\n".join(f"- left out: {line}" for line in result.skipped)))

# %% [markdown]
# ## Speedup per optimizer and scale

# %%
styled(speedups_frame(result))

# %% [markdown]
# ## What tuning cost: runs and FLOPs per optimizer and scale, beside the best loss found

# %%
styled(budgets_frame(result))

# %% [markdown]
# ## AdamW's loss against data per model size (line: fitted L(D)), and each optimizer's tuned loss
# The scales each curve fitted (those with more data than any other optimizer's run at that size named), those
# left out, and the noise its bootstrap used:

# %%
styled(curve_points_frame(result))

# %%
if result.curves:
    curves, points = curves_frame(result), tuned_points_frame(result)
    sizes = sorted(curves["N"].unique())
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 3.6), squeeze=False)
    for ax, n_params in zip(axes.flat, sizes):
        sns.lineplot(data=curves[curves["N"] == n_params], x="D", y="loss", color="grey", ax=ax,
                     label=f"{reference}: fitted L(D)")
        sns.scatterplot(data=points[points["N"] == n_params], x="D", y="loss", hue="optimizer", style="optimizer",
                        s=70, ax=ax, hue_order=list(sweeps), style_order=list(sweeps))
        ax.set(xscale="log", title=f"N = {n_params:.3g}", xlabel="D (tokens)", ylabel="tuned held-out loss")
        ax.tick_params(axis="x", which="minor", labelbottom=False)  # decades only: minor labels overlap
    fig.tight_layout()
else:
    display(Markdown("No curve was fitted: no other optimizer to compare."))

# %% [markdown]
# ## The talk's claims, per optimizer

# %%
styled(verdicts_frame(result))

# %%
unjudged = unjudged_frame(result)
styled(unjudged) if not unjudged.empty else Markdown("Every claim was judged for every optimizer.")

# %% [markdown]
# ## The speedup against model size, predicted at `analysis.speedup_targets`

# %%
predictions = predictions_frame(result)
styled(predictions) if not predictions.empty else Markdown("No size law: see the lines left out above.")

# %% [markdown]
# ## AdamW's optimum carried to each optimizer (the names they share), against its own tuned loss

# %%
styled(transfers_frame(result))
