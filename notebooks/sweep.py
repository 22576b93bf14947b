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
# # Coordinate descent at one scale
# From the baseline, each free hyperparameter is swept over its grid with the others fixed; the best value
# is adopted only if it beats the incumbent by more than the tolerance, and passes repeat until nothing
# changes. Every run is trained on the scale's full token budget and scored on held-out data, all with
# the same seed, data order and evaluation set (common random numbers). Finished runs come from the run
# store, so re-running this notebook trains only what is missing.

# %% tags=["parameters"]
scale = ""  # a scale of this phase in the params (default: the phase's first scale)
phase = "phase1"  # "phase1": every hyperparameter free; "law": sensitive + laws_for (reads results/sensitivity.json)
params_file = ""  # default: the active params/study.yaml
optimizer = ""  # another optimizer of params `optimizers` (its results/optimizers/<name>/); "": the study's own

# %%
import pandas as pd
from IPython.display import Markdown, display

from optsweep.report import optimizer_study, plots, slices_frame
from optsweep.results.documents import SweepResult, read_document
from optsweep.search import run_sweep

paths, params = optimizer_study(optimizer, params_file)  # enters the root: the params' run store, data folder
scale = scale or params.first_scale(phase)
result_path = paths.sweep(scale, phase)
if result_path.is_file():  # written by the phase's search (`dvc repro`, `optsweep sweep --phase`)
    sweep = read_document(result_path, SweepResult)
    display(Markdown(f"From `{result_path.relative_to(paths.root)}` ({sweep.provenance.created}); "
                     f"`optsweep sweep --scale {scale}{f' --optimizer {optimizer}' if optimizer else ''}` or "
                     "`dvc repro` brings it up to date."))
else:  # opened before the study ran: search this scale now (stored runs are reused)
    sensitivity = str(paths.sensitivity) if phase == "law" else None  # law: the sensitive ones and laws_for free
    run_sweep(params, scale, result_path, sensitivity_path=sensitivity)
    sweep = read_document(result_path, SweepResult)

# %%
s = sweep.scale
display(Markdown(
    f"**Scale {scale}** ({phase}): width {s['width']}, depth {s['depth']}, N = {s['n_params']:,} non-embedding "
    f"parameters, D = {s['tokens']:,} tokens ({s['steps']} steps of {s['batch_size']} x {s['seq_len']}).  \n"
    f"Best held-out loss **{sweep.best_loss:.4f}** after {sweep.passes} pass(es); "
    f"converged: **{sweep.converged}** (stop rule: {sweep.stop_rule}, tolerance {sweep.tolerance} "
    f"{sweep.tolerance_kind})." + (f"  \nNot converged: {sweep.why_not_converged}." if sweep.why_not_converged else "")
))
pd.DataFrame({"start": sweep.baseline, "best": sweep.best}).T

# %% [markdown]
# ## Loss along each hyperparameter around the best configuration (final 1-D slices)

# %%
slices = slices_frame([sweep])
if slices.empty:
    display(Markdown("No free hyperparameters at this scale: the baseline was the only run."))
else:
    plots.loss_slices(slices, value="loss")
    display(slices.pivot_table(index=["hparam", "value"], values="loss", aggfunc="first").round(4))

# %% [markdown]
# ## Descent trajectory, near-best set and compute

# %%
if sweep.trajectory:
    plots.trajectory(sweep)

# %%
display(pd.DataFrame([{**c.hparams, "loss": c.loss} for c in sweep.near_best]))
if sweep.noise:
    display(Markdown(f"Seed noise (pooled std over {len(sweep.noise.seeds)} extra seeds): "
                     f"**{sweep.noise.std:.4f}**"))
pd.Series(sweep.compute.model_dump()).to_frame("value")

# %% [markdown]
# ## Held-out loss during training

# %%
plots.eval_curves(sweep);
