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
# A hyperparameter is *sensitive* when both of the brief's standards hold: its optimum moves between scales
# (one Wald test per hyperparameter on the per-scale optima and their standard errors, Holm over the
# hyperparameters) and the loss cares (the best single value, after the width rule for lr, costs more than
# the threshold at some scale on that scale's own fitted curve, beyond the regret's error). *Insensitive*:
# that value costs less than the threshold everywhere, beyond its error; *inconclusive*: the rest. Scale
# pairs that differ only in data or only in model size tell what causes a shift. The original study's rule
# (one value near-best at every scale = stable) is shown beside it.

# %% tags=["parameters"]
params_file = ""  # default: the active params/study.yaml
optimizer = ""  # another optimizer of params `optimizers` (its results/optimizers/<name>/); "": the study's own

# %%
import pandas as pd
from IPython.display import HTML, Markdown, display

from optsweep.analysis import analyze_sensitivity, runs_table_from_sweeps
from optsweep.report import (
    analysis_warnings,
    hypotheses_frame,
    load_sweeps,
    noise_frame,
    optimizer_study,
    plots,
    reasons_details,
    sensitivity_frame,
    slices_frame,
    styled,
)
from optsweep.results.documents import Provenance, as_json, sweeps_origin, write_document

paths, params = optimizer_study(optimizer, params_file)
if optimizer:
    display(Markdown(f"Optimizer **{optimizer}** (results in `{paths.results.relative_to(paths.root)}`)"))
sweeps = load_sweeps(paths.sweeps("phase1"), params.scales_to_compare())
table = runs_table_from_sweeps(sweeps)
origin = sweeps_origin(sweeps)  # what the sweeps were trained with: data, trainer and its code
sensitivity = analyze_sensitivity(table, params.analysis, provenance=Provenance.now(params.params_hash(), **origin))
write_document(paths.sensitivity, sensitivity)
if analysis_warnings(sensitivity):
    display(Markdown(analysis_warnings(sensitivity)))

# %%
display(styled(sensitivity_frame(sensitivity)))
display(HTML(reasons_details(sensitivity)))

# %% [markdown]
# ## Noise per scale, and runs marked diverged because they blew up
# The noise of one config is stated (`analysis.noise`), measured from seeds (paired under common random
# numbers) or from differences of neighbouring grid values, never from the scatter about a fit; it sets the
# optima's and regrets' errors, and the threshold stays the configured one.

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
        {"hyperparameter": h, "scale": scale, **as_json(optimum)}
        for h, v in sensitivity.hyperparameters.items()
        for scale, optimum in v.optimum.items()
    ]
))

# %% [markdown]
# ## The brief's hypotheses

# %%
styled(hypotheses_frame(sensitivity))
