"""The schedules (AdamW's cosine, the linear and WSD ones other optimizers declare), weight-decay groups and
gradient clipping, through optsweep.optimizers.parts."""

from __future__ import annotations

import math

import pytest
import torch

from optsweep.optimizers import build, load_optimizer, resolve_hparams
from optsweep.optimizers.parts import clip_gradients, clipped_parameters, lr_factor, param_groups
from optsweep.params.sections import Scale
from optsweep.params.study import HPARAMS as STUDY_HPARAMS
from optsweep.train.model import build_model

HPARAMS = {"lr": 0.01, "min_lr_ratio": 0.1, "warmup": 5, "beta1": 0.9, "beta2": 0.95,
           "weight_decay": 0.1, "eps": 1e-8, "clip": 1.0}


def tiny_model() -> torch.nn.Module:
    return build_model(Scale(width=16, depth=2, heads=2, seq_len=8, batch_size=1, tokens=8).derived(100), seed=0)


def lrs_over_run(hparams: dict, steps: int, name: str = "adamw") -> list[list[float]] | list[float]:
    """The lr each optimizer step of a run uses (AdamW: one number, others: one per param group)."""
    optimizer, schedule = build(name, tiny_model(), hparams, steps)
    lrs = []
    for _ in range(steps):
        groups = [g["lr"] for g in optimizer.param_groups]
        lrs.append(groups[0] if name == "adamw" else groups)
        optimizer.step()
        schedule.step()
    return lrs


def test_schedule_warmup_peak_and_floor():
    lrs = lrs_over_run(HPARAMS, steps=20)
    assert lrs[0] == 0.0
    assert lrs[2] == pytest.approx(0.01 * 2 / 5)
    assert lrs[5] == pytest.approx(0.01)  # end of warmup: the peak
    assert lrs[-1] == pytest.approx(0.1 * 0.01)  # last step: min_lr_ratio * lr
    assert all(a < b for a, b in zip(lrs[:5], lrs[1:6]))
    assert all(a > b for a, b in zip(lrs[5:], lrs[6:]))
    assert lrs[12] == pytest.approx(0.01 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 7 / 14))))  # cosine midpoint


def test_schedule_without_warmup_or_floor():
    lrs = lrs_over_run({**HPARAMS, "warmup": 0, "min_lr_ratio": 0.0}, steps=10)
    assert lrs[0] == pytest.approx(0.01) and lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_adamw_keeps_the_study_knobs_and_its_cosine():
    """AdamW declares no `decay`, so its run specs (and keys) hold the study's eight hyperparameters only."""
    assert sorted(resolve_hparams("adamw", {})) == sorted(STUDY_HPARAMS)
    assert load_optimizer("adamw").schedule.kind == "cosine"
    with pytest.raises(Exception, match="has no hyperparameter 'decay'"):
        resolve_hparams("adamw", {"decay": 0.5})


def test_linear_schedule_holds_then_decays_over_the_last_fraction():
    steps, decay = 11, 0.8  # the decay starts at step round(0.2 * 10) = 2
    lrs = [lr_factor(step, steps, 0, 0.0, "linear", decay) for step in range(steps)]
    assert lrs[:3] == [1.0, 1.0, 1.0]
    assert lrs[6] == pytest.approx(0.5) and lrs[-1] == 0.0
    assert all(a - b == pytest.approx(1 / 8) for a, b in zip(lrs[2:], lrs[3:]))


def test_wsd_cosine_warms_up_holds_and_decays_to_the_floor():
    steps, warmup, decay = 21, 4, 0.5  # stable from 4 to 10, cosine from 10 to 20
    lrs = [lr_factor(step, steps, warmup, 0.1, "cosine", decay) for step in range(steps)]
    assert lrs[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert lrs[4:11] == [1.0] * 7
    assert lrs[15] == pytest.approx(0.1 + 0.9 * 0.5)  # the cosine's midpoint
    assert lrs[-1] == pytest.approx(0.1)


def test_a_decay_past_the_warmup_starts_where_warmup_ends():
    steps, warmup = 20, 5
    assert [lr_factor(s, steps, warmup, 0.0, "linear", 1.0) for s in range(steps)] == \
        [lr_factor(s, steps, warmup, 0.0, "linear", 0.9) for s in range(steps)]


@pytest.mark.parametrize("name", ["muon", "scion"])
def test_muon_and_scion_run_the_papers_linear_schedule_without_warmup(name):
    hparams = resolve_hparams(name, {})
    assert (hparams["warmup"], hparams["decay"]) == (0, 0.8)
    assert load_optimizer(name).schedule.kind == "linear"
    lrs = lrs_over_run({"lr": 0.01}, steps=11, name=name)
    ratios = [[lr / lrs[0][i] for i, lr in enumerate(groups)] for groups in lrs]
    expected = [lr_factor(step, 11, 0, 0.0, "linear", 0.8) for step in range(11)]
    assert all(r == pytest.approx([e] * len(r)) for r, e in zip(ratios, expected))  # every part, one schedule


def group_names(model: torch.nn.Module, exclude: list[str]) -> tuple[set[str], set[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    decayed, plain = param_groups(model, 0.1, exclude)
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    return {names[id(p)] for p in decayed["params"]}, {names[id(p)] for p in plain["params"]}


def test_decay_skips_norms_and_embeddings_but_not_the_output_head():
    model = tiny_model()
    decayed, plain = group_names(model, ["norm", "embedding", "bias"])
    assert plain == {"model.embed_tokens.weight", "model.norm.weight"} | {
        f"model.layers.{i}.{norm}.weight" for i in range(2) for norm in ("input_layernorm", "post_attention_layernorm")
    }
    assert "lm_head.weight" in decayed and "model.layers.0.mlp.down_proj.weight" in decayed
    assert len(decayed) + len(plain) == len(list(model.parameters()))


def test_decay_skips_biases_and_is_configurable():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    decayed, plain = group_names(model, ["norm", "embedding", "bias"])
    assert decayed == {"1.weight"}
    assert plain == {"0.weight", "1.bias", "2.weight", "2.bias"}
    decayed, plain = group_names(model, ["bias"])
    assert decayed == {"0.weight", "1.weight", "2.weight"}
    decayed, plain = group_names(model, [])
    assert plain == set()


def test_optimizer_carries_the_hyperparameters():
    optimizer, _ = build("adamw", tiny_model(), HPARAMS, steps=10)
    for group in optimizer.param_groups:
        assert group["betas"] == (0.9, 0.95) and group["eps"] == 1e-8 and group["initial_lr"] == 0.01


def global_grad_norm(model: torch.nn.Module) -> float:
    return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item()


def big_gradients() -> torch.nn.Module:
    model = tiny_model()
    (1e3 * model(input_ids=torch.arange(8)[None]).logits.square().sum()).backward()
    return model


def test_clipping_bounds_the_gradient_the_update_uses():
    model = big_gradients()
    before = global_grad_norm(model)
    reported = clip_gradients(model.parameters(), 0.5)
    assert reported.item() == pytest.approx(before, rel=1e-5) and before > 0.5
    assert global_grad_norm(model) == pytest.approx(0.5, rel=1e-4)


def test_clipping_off_leaves_gradients_alone():
    model = big_gradients()
    before = [p.grad.clone() for p in model.parameters()]
    assert clip_gradients(model.parameters(), 0.0) is None
    assert all(torch.equal(a, p.grad) for a, p in zip(before, model.parameters()))


@pytest.mark.parametrize("name", ["muon", "scion"])
def test_the_clip_bounds_only_the_adamw_or_signum_branch(name):
    model = big_gradients()
    optimizer, _ = build(name, model, {}, steps=10)
    matrices, rest = optimizer.parts
    matrix_grads = [p.grad.clone() for g in matrices.param_groups for p in g["params"]]
    clip_gradients(clipped_parameters(optimizer, model), 0.5)
    assert all(torch.equal(a, p.grad) for a, p in zip(matrix_grads, (p for g in matrices.param_groups
                                                                       for p in g["params"])))
    rest_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for g in rest.param_groups for p in g["params"]]))
    assert rest_norm.item() == pytest.approx(0.5, rel=1e-4)


def test_a_single_optimizer_clips_every_parameter():
    model = big_gradients()
    optimizer, _ = build("adamw", model, {}, steps=10)
    assert clipped_parameters(optimizer, model) == list(model.parameters())
