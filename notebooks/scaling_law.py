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
# # Scaling laws for the sensitive hyperparameters
# The law-phase sweeps ran coordinate descent over the sensitive hyperparameters only, the rest fixed at
# their constants, at more (N, D) scales. For each sensitive hyperparameter we fit
# log h* = a + b log N + c log D by OLS (statsmodels) on one optimum per scale, with 95% intervals and
# leave-one-out error; when N and D move together in the data the exponents cannot be separated and the fit
# falls back to a compute-only law h* = a C^b. The best loss per scale is fitted by L = E + A/N^alpha + B/D^beta.

# %% tags=["parameters"]
params_file = ""  # default: the active params/study.yaml
optimizer = ""  # another optimizer of params `optimizers` (its results/optimizers/<name>/); "": the study's own

# %%
import pandas as pd
from IPython.display import Markdown, display

from optsweep.analysis import fit_scaling_laws, runs_table_from_sweeps
from optsweep.report import (
    analysis_warnings,
    law_curves,
    law_forms_frame,
    optimizer_study,
    plots,
    study_sweeps,
    styled,
)
from optsweep.results.documents import (
    Provenance,
    SensitivityResult,
    as_json,
    read_document,
    sweeps_origin,
    write_document,
)

paths, params = optimizer_study(optimizer, params_file)
if optimizer:
    display(Markdown(f"Optimizer **{optimizer}** (results in `{paths.results.relative_to(paths.root)}`)"))
sweeps = study_sweeps(paths, params)
sensitivity = read_document(paths.sensitivity, SensitivityResult)
laws = fit_scaling_laws(runs_table_from_sweeps(sweeps), sensitivity, settings=params.analysis,
                        provenance=Provenance.now(params.params_hash(), **sweeps_origin(sweeps)))
write_document(paths.scaling_law, laws)
display(Markdown(f"Sensitive hyperparameters: **{', '.join(sensitivity.sensitive) or 'none'}**"))
if laws.warnings:
    display(Markdown(analysis_warnings(None, laws)))

# %% [markdown]
# ## Fitted laws, coefficients with 95% intervals

# %%
for hparam, law in laws.laws.items():
    loo = "undefined (too few points)" if law.loo_rmse is None else f"{law.loo_rmse:.3f}"
    r2 = "-" if law.r2 is None else f"{law.r2:.3f}"
    display(Markdown(f"### {hparam}: `{law.form}`  \n{law.note}  \n"
                     f"R^2 = {r2}, leave-one-out RMSE (log) = {loo}, {law.n_points} points"))
    coefficients = pd.DataFrame({name: as_json(c) for name, c in law.coefficients.items()})
    display(styled(coefficients.T.reset_index(names="coefficient")))
    display(styled(law_forms_frame(law)))
    print(law.summary)

# %% [markdown]
# ## Optima and fits
# Points: the optimum found at each scale. Lines: the fitted law at each token budget, band = 95% interval.

# %%
for hparam, law in laws.laws.items():
    plots.law_points(pd.DataFrame([as_json(point) for point in law.points]), law_curves(laws, hparam), hparam)

# %% [markdown]
# ## Learning rate against width, and the loss law

# %%
display(styled(pd.DataFrame(laws.lr_width["points"])) if laws.lr_width else Markdown("lr was not swept."))
for hparam, reason in laws.unfitted.items():
    display(Markdown(f"**{hparam}** is sensitive but has no law: {reason}"))
for hparam, reason in laws.skipped.items():
    display(Markdown(f"**{hparam}**: {reason}"))
if laws.lr_width:
    display(Markdown(f"Width rule used by the sensitivity beside the width fit: {laws.lr_width['note']}"))
display(Markdown(f"Loss law: {laws.loss_law['form']}" if laws.loss_law.get("form")
                 else f"Loss law not fitted: {laws.loss_law.get('reason', 'not enough scales')}"))
