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
# # Exploring the study's runs and results
# Not a pipeline stage: open it in JupyterLab (`make lab`) and dig. Every stored run and every results file
# is loaded into a tidy pandas frame by `optsweep.results` (one row per observation), so any question is a
# filter, a groupby or a seaborn facet away. It reads the project found from the kernel's directory.

# %%
import matplotlib.pyplot as plt
import seaborn as sns
from IPython.display import Markdown, display

from optsweep import results
from optsweep.analysis.table import hparam_names
from optsweep.axes import axis_of
from optsweep.params.paths import project
from optsweep.report import law_curves, plots
from optsweep.results.documents import ScalingLaws, read_document

paths = project()
runs = results.runs(paths)
sweeps = results.every_optimizer(results.sweeps, paths)  # the study's optimizer and every one compared with it
trajectories = results.every_optimizer(results.trajectories, paths)
display(Markdown(f"Project **{paths.root}**: {len(runs)} runs in the run store, {len(sweeps)} runs evaluated by "
                 f"{sweeps.groupby(['phase', 'scale']).ngroups if len(sweeps) else 0} sweeps."))

# %% [markdown]
# ## The run store
# Every run ever trained for this project (any sweep, any preset, any command), by status.

# %%
if runs.empty:
    display(Markdown("The run store is empty: run `make repro` or `optsweep sweep --scale NAME`."))
else:
    display(runs.groupby(["scale", "status"]).size().unstack(fill_value=0))
    sns.relplot(data=runs, x="wall_s", y="loss", hue="scale", style="status", height=3.5, aspect=1.6)

# %% [markdown]
# ## Loss landscape per hyperparameter and scale
# Every run each sweep evaluated, placed by each of its hyperparameters; y = loss above that sweep's best.
# The lower envelope of each panel is the 1-D landscape the coordinate descent saw.

# %%
hparams = [h for h in hparam_names() if h in sweeps and sweeps[h].nunique() > 1]
landscape = sweeps[sweeps["status"] == "ok"].melt(
    id_vars=["optimizer", "phase", "scale", "key", "delta_loss"], value_vars=hparams, var_name="hparam",
    value_name="value",
).dropna(subset=["value"])  # a name another optimizer lacks
if landscape.empty:
    display(Markdown("No finished sweep yet."))
else:
    grid = sns.relplot(data=landscape, x="value", y="delta_loss", hue="scale", style="optimizer", col="hparam",
                       col_wrap=4, height=2.6, facet_kws={"sharex": False}, alpha=0.7)
    for hparam, ax in grid.axes_dict.items():
        if axis_of(hparam) == "log":
            ax.set_xscale("log")
    grid.set(ylim=(None, landscape["delta_loss"].quantile(0.95)))  # the few blown-up runs would flatten the rest

# %% [markdown]
# ## Trajectories of the searches
# The incumbent's loss after each coordinate step (one line per sweep); a flat stretch is a coordinate
# whose grid held nothing better than the tolerance.

# %%
if not trajectories.empty:
    sns.relplot(data=trajectories, x="step", y="loss", hue="scale", style="optimizer", col="phase", kind="line",
                marker="o", height=3.2, aspect=1.3, facet_kws={"sharey": False})
    display(trajectories.pivot_table(index=["optimizer", "phase", "scale"], columns="hparam", values="value",
                                     aggfunc="last"))

# %% [markdown]
# ## Sensitivity and optima per scale

# %%
if paths.sensitivity.is_file():
    sensitivity = results.sensitivity(paths)
    display(sensitivity.drop_duplicates("hparam")[["hparam", "sensitive", "loss_sensitive", "optimum_shifts",
                                                   "shift_cause"]].set_index("hparam"))
    display(sensitivity.pivot_table(index="hparam", columns="scale", values="optimum"))
else:
    display(Markdown(f"No {paths.sensitivity.name} yet (the sensitivity stage needs two phase-1 scales)."))

# %% [markdown]
# ## Scaling laws
# Coefficients with their 95% intervals; the optima each law was fitted on, with the law at each token
# budget (band: 95% interval).

# %%
if paths.scaling_law.is_file() and not (laws := results.laws(paths)).empty:
    display(laws.set_index(["hparam", "coefficient"]))
    fitted = read_document(paths.scaling_law, ScalingLaws)
    for hparam, points in results.law_points(paths).groupby("hparam"):
        plots.law_points(points, law_curves(fitted, hparam), hparam)
        plt.show()
else:
    display(Markdown("No fitted law yet: run the scaling_law stage (`make repro`)."))
