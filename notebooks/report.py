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
# # optsweep: near-optimal AdamW hyperparameters and how they scale
# Every number and figure on this page is read from this study's results files (results/*.json), produced
# by the runs it trained. Per-scale details are in the sweep reports linked below.

# %% tags=["parameters"]
params_file = ""  # default: the active params/study.yaml

# %%
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import HTML, Markdown, display

from optsweep.jsonio import write_json
from optsweep.params.paths import enter_root
from optsweep.params.settings import load_params
from optsweep.report import (
    analysis_warnings,
    answer_paragraph,
    compute_summary,
    decision_costs,
    hypotheses_frame,
    law_curves,
    law_forms_frame,
    load_comparison,
    load_sweeps,
    noise_frame,
    optimizer_pages,
    plots,
    provenance_frame,
    reasons_details,
    recommended_frame,
    reference_curve_lines,
    reference_curves_frame,
    sensitivity_frame,
    slices_frame,
    speedup_frame,
    speedup_points,
    speedup_verdicts_frame,
    styled,
    sweep_summary_frame,
    transfer_frame,
    tuned_hparams_frame,
    tuned_loss_frame,
    tuned_points,
)
from optsweep.report.speedup_tables import budgets_frame, curve_points_frame, predictions_frame, unjudged_frame
from optsweep.results.documents import ScalingLaws, SensitivityResult, as_json, read_document
from optsweep.results.metrics import study_metrics

paths = enter_root()
params = load_params(params_file or paths.params)
phase1 = load_sweeps(paths.sweeps("phase1"), list(params.scales))
law_phase = load_sweeps(paths.sweeps("law"), list(params.law_scales))
sensitivity = read_document(paths.sensitivity, SensitivityResult)
laws = read_document(paths.scaling_law, ScalingLaws)
write_json(paths.metrics, study_metrics(phase1 + law_phase, sensitivity, laws).model_dump());  # for `dvc metrics`

# %% [markdown]
# ## The answer

# %%
display(Markdown(answer_paragraph(sensitivity, laws, decision_costs(params, phase1))))
if analysis_warnings(sensitivity, laws):
    display(Markdown("## Warnings\n" + analysis_warnings(sensitivity, laws)))

# %% [markdown]
# ## Recommended hyperparameters
# A fitted law for each hyperparameter that is sensitive to scale, a constant for the others; the original
# study's reported optimum beside them.

# %%
styled(recommended_frame(sensitivity, laws))

# %% [markdown]
# ## Loss against each hyperparameter at each scale
# Final 1-D slices around each scale's best configuration, as loss above that scale's best; x = diverged.

# %%
plots.loss_slices(slices_frame(phase1));

# %% [markdown]
# ## Sensitivity to scale, with the reason for each verdict
# One verdict per hyperparameter: sensitive (the margin over the threshold beats z x the noise of a
# difference, z corrected for the number of comparisons), insensitive (no margin), or inconclusive (a margin
# within the noise). Below: the noise measured at each scale and the runs marked diverged because they blew up.

# %%
display(styled(sensitivity_frame(sensitivity)))
display(HTML(reasons_details(sensitivity)))
styled(noise_frame(sensitivity))

# %% [markdown]
# ## Scaling laws for the sensitive hyperparameters
# And for those `analysis.laws_for` asks for even when they are not sensitive. Each figure: the optimum per
# scale against N and against D, with the fitted law and its 95% interval.

# %%
if not laws.laws:
    display(Markdown("No hyperparameter was sensitive to scale and none was asked for: no law to fit."))
for hparam, law in laws.laws.items():
    r2 = "-" if law.r2 is None else f"{law.r2:.3f}"
    asked = " (not sensitive; fitted because `analysis.laws_for` asks for it)" if law.asked else ""
    display(Markdown(f"**{hparam}**{asked}: `{law.form}`, R^2 = {r2}, {law.n_points} points. {law.note}"))
    coefficients = pd.DataFrame({name: as_json(c) for name, c in law.coefficients.items()})
    display(styled(coefficients.T.reset_index(names="coefficient")))
    display(styled(law_forms_frame(law)))
    points = pd.DataFrame([as_json(point) for point in law.points])
    plots.law_points(points, law_curves(laws, hparam), hparam)
    plt.show()
    display(styled(points))
for hparam, reason in laws.unfitted.items():
    display(Markdown(f"**{hparam}** is sensitive but has no law: {reason}"))
if laws.skipped:  # one line: each has the same reason, its verdict
    not_fitted = ", ".join(f"**{h}** ({sensitivity.hyperparameters[h].verdict})" for h in laws.skipped)
    display(Markdown(f"No law fitted for {not_fitted}: not sensitive (`analysis.laws_for` fits one anyway)."))
if laws.lr_width and laws.lr_width.get("width_exponent"):
    display(Markdown(f"lr against width: {laws.lr_width['note']}"))

# %% [markdown]
# ## The brief's hypotheses

# %%
styled(hypotheses_frame(sensitivity))

# %%
comparison = load_comparison(paths, params, phase1 + law_phase)  # None unless params name other optimizers
if params.optimizers and not comparison:
    display(Markdown(f"Other optimizers in the params ({', '.join(params.optimizers)}), but no "
                     f"`{paths.speedup.relative_to(paths.root)}` yet: run the speedup stage to compare them."))
if comparison:
    speedup = comparison.speedup
    display(Markdown(
        "## Other optimizers against the tuned AdamW\n"
        "Every optimizer was tuned by the same coordinate descent on the same data, scales and seeds. "
        f"Speedup = D_eff / D: D_eff is the data {speedup.reference} needs to reach the optimizer's tuned loss "
        f"on its fitted L(D) = a D^-b + c at that model size, D the data the optimizer trained on. Intervals: "
        f"{speedup.level:.0%}, {speedup.bootstrap} ({speedup.replicates} replicates; the noise of one run is "
        + (f"the stated {speedup.stated_noise:g} (analysis.speedup_noise)" if speedup.stated_noise is not None else
           f"the one each optimizer's sensitivity analysis measured, at least {speedup.noise_floor:g}")
        + f": see the `noise` and `noise source` columns); D_eff outside {speedup.reference}'s fitted data range is "
        "flagged extrapolated. Compute and wall-clock speedups weigh D_eff and D by the runs' measured FLOPs per "
        "token and tokens per second."
    ))
    display(Markdown("### Tuned loss per optimizer and scale\nEach sweep's best held-out loss; - = not swept there."))
    display(styled(tuned_loss_frame(comparison)))
    display(Markdown("What tuning cost: the runs each sweep's result rests on and their FLOPs, beside its best loss."))
    display(styled(budgets_frame(speedup)))

# %%
if comparison:
    display(Markdown("### Speedup over the tuned AdamW"))
    display(styled(speedup_frame(speedup)))
    if speedup.skipped:
        display(Markdown("Left out: " + "; ".join(speedup.skipped)))
    if speedup.curves:  # none where no model size has three data scales (said in "Left out")
        display(Markdown(f"{speedup.reference}'s fitted loss against data at each model size, with the "
                         "coefficients' intervals; the points are every optimizer's tuned loss at the data it "
                         "trained on."))
        display(styled(reference_curves_frame(speedup)))
        display(styled(curve_points_frame(speedup)))
        plots.reference_curves(reference_curve_lines(speedup), tuned_points(speedup), speedup.reference)
        plt.show()
    points = speedup_points(speedup)
    if not points.empty:
        plots.speedups(points, speedup.reference)
        plt.show()
    unbounded = [f"{point.optimizer} at {point.scale}" for point in speedup.speedups if point.speedup is None]
    if unbounded:
        display(Markdown(f"Not drawn (below {speedup.reference}'s asymptote, no D_eff): {', '.join(unbounded)}."))

# %%
if comparison:
    display(Markdown("### Tuned hyperparameters side by side\nEach optimizer's best configuration at each scale; "
                     "empty: the optimizer has no such hyperparameter."))
    display(styled(tuned_hparams_frame(comparison)))
    display(Markdown("### The talk's claims, as hypotheses\nSupported or contradicted only when the deciding "
                     "interval clears the claim's boundary (the margin); otherwise inconclusive."))
    display(styled(speedup_verdicts_frame(speedup)))
    unjudged = unjudged_frame(speedup)
    if not unjudged.empty:
        display(Markdown("Not judged:"))
        display(styled(unjudged))
    predictions = predictions_frame(speedup)
    if not predictions.empty:
        display(Markdown("The speedup against model size, predicted at `analysis.speedup_targets`:"))
        display(styled(predictions))
    transfers = transfer_frame(comparison)
    display(Markdown(f"### Does {speedup.reference}'s optimum transfer?\n{speedup.reference}'s best at each "
                     "scale carried to the other optimizer where the names match (the rest at its own best), "
                     "trained; its loss next to the tuned one."))
    display(styled(transfers) if not transfers.empty else Markdown("No sweep carried an optimum across."))
    display(Markdown("Each optimizer's own pages:  \n" + "  \n".join(
        optimizer_pages(comparison, name, paths.reports) for name in comparison.others)))

# %% [markdown]
# ## Scales, runs and compute

# %%
display(styled(sweep_summary_frame(phase1 + law_phase)))
every_sweep = comparison.every_sweep() if comparison else phase1 + law_phase  # every optimizer's compute
display(styled(pd.DataFrame(compute_summary(every_sweep).items(), columns=["", "total"])))
links = [f"[{s.scale['name']}](sweeps/{s.scale['name']}.html)" for s in phase1]
links += [f"[{s.scale['name']}](law_sweeps/{s.scale['name']}.html)" for s in law_phase]
analysis_links = "[sensitivity](sensitivity.html) · [scaling laws](scaling_law.html)"
display(Markdown("Sweep reports: " + " · ".join(links) + " · " + analysis_links))

# %% [markdown]
# ## Provenance

# %%
styled(provenance_frame(params, phase1 + law_phase))
