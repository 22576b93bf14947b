"""AdamW's schedule, weight-decay groups and gradient clipping, through optsweep.optimizers.parts."""

from __future__ import annotations

import math

import pytest
import torch

from optsweep.optimizers import build
from optsweep.optimizers.parts import clip_gradients, param_groups
from optsweep.params.settings import Scale
from optsweep.train.model import build_model

HPARAMS = {"lr": 0.01, "min_lr_ratio": 0.1, "warmup": 5, "beta1": 0.9, "beta2": 0.95,
           "weight_decay": 0.1, "eps": 1e-8, "clip": 1.0}


def tiny_model() -> torch.nn.Module:
    return build_model(Scale(width=16, depth=2, heads=2, seq_len=8, batch_size=1, tokens=8).derived(100), seed=0)


def lrs_over_run(hparams: dict, steps: int) -> list[float]:
    """The lr each optimizer step of a run uses."""
    optimizer, schedule = build("adamw", tiny_model(), hparams, steps)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
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
    reported = clip_gradients(model, 0.5)
    assert reported.item() == pytest.approx(before, rel=1e-5) and before > 0.5
    assert global_grad_norm(model) == pytest.approx(0.5, rel=1e-4)


def test_clipping_off_leaves_gradients_alone():
    model = big_gradients()
    before = [p.grad.clone() for p in model.parameters()]
    assert clip_gradients(model, 0.0) is None
    assert all(torch.equal(a, p.grad) for a, p in zip(before, model.parameters()))
