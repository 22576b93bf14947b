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
# # Which hyperparameters are sensitive to scale?
# A hyperparameter is *sensitive* when both of the brief's standards hold: the loss cares about it (moving
# away from the optimum costs more than the noise threshold) and its optimum shifts between scales (judged
# by regret: what one scale's optimum costs at another) by a margin significant against the measured noise;
# *inconclusive* when that margin is within the noise, *insensitive* when there is none. Scale pairs that
# differ only in data or only in model size tell what causes a shift. The original study's rule (one value
# near-best at every scale = stable) is shown beside it.

# %% tags=["parameters"]
params_file = ""  # default: the active params/study.yaml
optimizer = ""  # another optimizer of params `optimizers` (its results/optimizers/<name>/); "": the study's own

# %%
import pandas as pd
from IPython.display import Markdown, display

from optsweep import plots
from optsweep.analysis import analyze_sensitivity, runs_table_from_sweeps
from optsweep.documents import SensitivityResult, stamped, sweeps_origin, write_document
from optsweep.report import (
    analysis_warnings,
    hypotheses_frame,
    load_sweeps,
    noise_frame,
    optimizer_study,
    sensitivity_frame,
    slices_frame,
    styled,
)

paths, params = optimizer_study(optimizer, params_file)
if optimizer:
    display(Markdown(f"Optimizer **{optimizer}** (results in `{paths.results.relative_to(paths.root)}`)"))
sweeps = load_sweeps(paths.sweeps("phase1"), params.scales_to_compare())
table = runs_table_from_sweeps(sweeps)
sensitivity = analyze_sensitivity(table, params.analysis)
origin = sweeps_origin(sweeps)  # what the sweeps were trained with: data, trainer and its code
write_document(paths.sensitivity, stamped(SensitivityResult, sensitivity, params.params_hash(), **origin))
if analysis_warnings(sensitivity):
    display(Markdown(analysis_warnings(sensitivity)))

# %%
styled(sensitivity_frame(sensitivity))

# %% [markdown]
# ## Noise per scale, and runs marked diverged because they blew up
# The noise is measured from the scatter of the runs about a local quadratic surface (and from seeds where
# there are any); it floors the threshold, and a verdict needs a margin over z x the noise of a difference.

# %%
styled(noise_frame(sensitivity))

# %% [markdown]
# ## Loss against each hyperparameter at each scale (relative to that scale's best; x = diverged)

# %%
plots.loss_slices(slices_frame(sweeps));

# %% [markdown]
# ## Optimum per scale

# %%
styled(pd.DataFrame(
    [
        {"hyperparameter": h, "scale": scale, **optimum}
        for h, v in sensitivity["hyperparameters"].items()
        for scale, optimum in v["optimum"].items()
    ]
))

# %% [markdown]
# ## The brief's hypotheses

# %%
styled(hypotheses_frame(sensitivity))
