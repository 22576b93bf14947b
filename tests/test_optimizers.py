"""Optimizer plug-ins (optsweep.optimizers): each trains a tiny Llama, bit for bit repeatably, with the
shared schedule; Muon gets only the hidden matrices; a user's optimizer plugs in; bad settings fail in one line."""

from __future__ import annotations

import io
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from conftest import small_study, write_params
from optsweep.axes import axis_of, to_axis
from optsweep.data.batches import TrainBatches, load_shards, val_batches
from optsweep.optimizers import (
    BUILT_IN,
    build,
    check_hparams,
    hidden_matrices,
    load_optimizer,
    optimizer_identity,
    resolve_hparams,
)
from optsweep.optimizers.parts import JointOptimizer, adamw, clip_gradients, clipped_parameters, lr_schedule
from optsweep.params.settings import ParamsError, load_params
from optsweep.train import Runtime, configure_determinism
from optsweep.train.model import build_model

STEPS = 40
# Settings that train the tiny model quickly; warmup 4 and each optimizer's declared schedule (to 0).
TRAIN_HPARAMS: dict[str, dict[str, Any]] = {
    "adamw": {"lr": 1e-2, "warmup": 4},
    "nadamw": {"lr": 1e-2, "warmup": 4},
    "cautious": {"lr": 1e-2, "warmup": 4},
    "muon": {"lr": 0.02, "muon_to_adam_lr": 0.5, "warmup": 4},
    "scion": {"lr": 0.02, "warmup": 4},
    "lion": {"lr": 3e-3, "warmup": 4},
    "adam_mini": {"lr": 1e-2, "warmup": 4},
    "mars": {"lr": 1e-2, "warmup": 4},
    "kron": {"lr": 3e-2, "weight_decay": 0.1, "warmup": 4},
    "soap": {"lr": 1e-2, "warmup": 4},
    "user_optimizer:sgd": {"lr": 0.5, "warmup": 4},
}


@pytest.fixture(scope="module")
def tiny(prepared_params, prepared_data):
    """The small study's scale "a" (width 32, 1 layer, vocab 512) and its prepared shards."""
    return prepared_params.scale("a").derived(prepared_data["vocab_size"]), load_shards(prepared_data)


def next_token_loss(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=tokens[:, :-1]).logits
    return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())


def train_tiny(name: str, tiny, steps: int = STEPS) -> tuple[float, list[torch.Tensor]]:
    """Train with `build`'s optimizer and schedule; returns the held-out loss and the final weights."""
    scale, shards = tiny
    configure_determinism(Runtime(torch.device("cpu"), "fp32"), threads=1)
    model = build_model(scale, seed=0)
    hparams = TRAIN_HPARAMS[name]
    optimizer, schedule = build(name, model, hparams, steps)
    batches = TrainBatches(shards.train, scale["batch_size"], scale["seq_len"], seed=0)
    for step in range(steps):
        next_token_loss(model, batches.batch(step)).backward()
        clip_gradients(clipped_parameters(optimizer, model), resolve_hparams(name, hparams)["clip"])
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        held_out = [next_token_loss(model, b).item() for b in val_batches(shards.val, 8, scale["seq_len"], 2048)]
    return sum(held_out) / len(held_out), [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("name", [*BUILT_IN, "user_optimizer:sgd"])
def test_each_optimizer_learns_and_is_bitwise_repeatable(name, tiny):
    loss, weights = train_tiny(name, tiny)
    assert loss < math.log(tiny[0]["vocab_size"]) - 0.5
    again, weights_again = train_tiny(name, tiny)
    assert again == loss
    assert all(torch.equal(a, b) for a, b in zip(weights, weights_again))


def test_adamw_entry_is_the_study_adamw_bit_for_bit(tiny):
    hparams = resolve_hparams("adamw", TRAIN_HPARAMS["adamw"])
    first = build_model(tiny[0], seed=0)
    second = build_model(tiny[0], seed=0)
    ours, our_schedule = build("adamw", first, hparams, STEPS)
    study = adamw(second, hparams)
    study_schedule = lr_schedule(study, STEPS, hparams["warmup"], hparams["min_lr_ratio"])
    assert type(ours) is torch.optim.AdamW
    assert [g["lr"] for g in ours.param_groups] == [g["lr"] for g in study.param_groups] == [0.0, 0.0]
    batch = TrainBatches(tiny[1].train, 8, 32, seed=0).batch(0)
    for model, optimizer, schedule in ((first, ours, our_schedule), (second, study, study_schedule)):
        for _ in range(5):
            next_token_loss(model, batch).backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters()))


def parameter_names(model: torch.nn.Module, params) -> set[str]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)] for p in params}


def test_muon_gets_the_hidden_matrices_and_adamw_the_rest(tiny):
    scale = {**tiny[0], "depth": 2}
    model = build_model(scale, seed=0)
    optimizer, _ = build("muon", model, {"lr": 0.05, "muon_to_adam_lr": 0.08, "weight_decay": 0.2}, steps=10)
    assert isinstance(optimizer, JointOptimizer)
    muon, adam = optimizer.parts
    assert type(muon) is torch.optim.Muon and type(adam) is torch.optim.AdamW
    projections = [f"self_attn.{p}_proj" for p in "qkvo"] + [f"mlp.{p}_proj" for p in ("gate", "up", "down")]
    hidden = {f"model.layers.{i}.{projection}.weight" for i in range(2) for projection in projections}
    assert parameter_names(model, (p for g in muon.param_groups for p in g["params"])) == hidden
    decayed, plain = (parameter_names(model, g["params"]) for g in adam.param_groups)
    assert decayed == {"lm_head.weight"}
    assert "model.embed_tokens.weight" in plain and "model.norm.weight" in plain
    assert len(hidden) + len(decayed) + len(plain) == len(list(model.parameters()))
    assert [g["initial_lr"] for g in optimizer.param_groups] == pytest.approx([0.05, 4e-3, 4e-3])
    assert [g["ns_steps"] for g in muon.param_groups] == [10]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.2, 0.2, 0.0]


def test_muon_schedule_and_checkpoint_cover_both_parts(tiny):
    model = build_model(tiny[0], seed=0)
    hparams = {"lr": 0.05, "muon_to_adam_lr": 0.08, "warmup": 2, "min_lr_ratio": 0.1}
    optimizer, schedule = build("muon", model, hparams, steps=10)
    batch = TrainBatches(tiny[1].train, 8, 32, seed=0).batch(0)
    for _ in range(9):
        next_token_loss(model, batch).backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    muon, adam = optimizer.parts
    assert muon.param_groups[0]["lr"] == pytest.approx(0.1 * 0.05)  # the last step: min_lr_ratio * lr
    assert adam.param_groups[0]["lr"] == pytest.approx(0.1 * 4e-3)
    saved = optimizer.state_dict()
    restored, restored_schedule = build("muon", build_model(tiny[0], seed=0), hparams, steps=10)
    restored_schedule.load_state_dict(schedule.state_dict())
    restored.load_state_dict(saved)
    assert [g["lr"] for g in restored.param_groups] == [g["lr"] for g in optimizer.param_groups]
    assert restored.param_groups[0] is restored.parts[0].param_groups[0]  # the schedule still moves the parts
    assert set(restored.parts[0].state_dict()["state"]) == set(saved["parts"][0]["state"])


def test_lr_transfer_moves_muons_ratio_tied_adamw_lr_with_its_lr(tmp_path, tiny):
    raw = small_study(tmp_path / "data")
    raw["study"]["lr_transfer"] = {"rule": "inverse_width", "reference_width": 32}
    raw["optimizers"] = {"muon": {"baseline": {"lr": 0.02, "muon_to_adam_lr": 0.2}, "grid": {"lr": [0.01, 0.02]}}}
    muon = load_params(write_params(tmp_path / "p.yaml", raw)).for_optimizer("muon")
    factors = {name: muon.study.lr_transfer.factor(muon.scale(name).width) for name in muon.scales}
    assert len(set(factors.values())) == 2  # widths 32 and 64: the lr moves at one of them
    for name, factor in factors.items():
        baseline, _ = muon.scale_space(name)
        assert baseline["muon_to_adam_lr"] == 0.2  # the ratio stays, the lr moves
        optimizer, _ = build("muon", build_model(tiny[0], seed=0), baseline, steps=10)
        matrices, rest = optimizer.parts
        assert matrices.param_groups[0]["initial_lr"] == pytest.approx(0.02 * factor)
        assert rest.param_groups[0]["initial_lr"] == pytest.approx(0.2 * 0.02 * factor)


@pytest.mark.parametrize("block_size", [16, 256])
def test_soap_preconditions_blocks_of_its_block_size(block_size, tiny):
    """The output head (vocab x width) is cut into blocks of at most `block_size` along each dimension."""
    assert resolve_hparams("soap", {})["precondition_frequency"] == 1  # the paper's best
    model = build_model(tiny[0], seed=0)
    optimizer, _ = build("soap", model, {"lr": 1e-2, "block_size": block_size}, steps=10)
    batch = TrainBatches(tiny[1].train, 8, 32, seed=0).batch(0)
    next_token_loss(model, batch).backward()
    optimizer.step()
    rows, columns = model.lm_head.weight.shape
    blocks = math.ceil(rows / block_size) * math.ceil(columns / block_size)
    assert len(optimizer.state[model.lm_head.weight]) == blocks


def train_steps(model: torch.nn.Module, optimizer, schedule, batches: TrainBatches, steps: range) -> None:
    for step in steps:
        next_token_loss(model, batches.batch(step)).backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", list(BUILT_IN))
def test_each_optimizer_resumes_from_a_weights_only_checkpoint_bit_for_bit(name, tiny):
    """The trainer saves optimizer and schedule state with torch.save and loads it with weights_only=True."""
    hparams, batches = TRAIN_HPARAMS[name], TrainBatches(tiny[1].train, 8, 32, seed=0)
    model = build_model(tiny[0], seed=0)
    optimizer, schedule = build(name, model, hparams, STEPS)
    train_steps(model, optimizer, schedule, batches, range(3))
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()},
               buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = build_model(tiny[0], seed=0)
    resumed_optimizer, resumed_schedule = build(name, resumed, hparams, STEPS)
    resumed.load_state_dict(saved["model"])
    resumed_optimizer.load_state_dict(saved["optimizer"])
    resumed_schedule.load_state_dict(saved["schedule"])
    train_steps(model, optimizer, schedule, batches, range(3, 6))
    train_steps(resumed, resumed_optimizer, resumed_schedule, batches, range(3, 6))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), resumed.parameters()))


def gradients(steps: int, shape: tuple[int, ...]) -> list[torch.Tensor]:
    """Gradients with a steady part and noise, so that momentum and gradient disagree in sign now and then."""
    generator = torch.Generator().manual_seed(0)
    steady = torch.randn(shape, generator=generator)
    return [steady + 2 * torch.randn(shape, generator=generator) for _ in range(steps)]


def steps_on_one_matrix(name: str, hparams: dict[str, Any], grads: list[torch.Tensor]) -> torch.Tensor:
    """The weight of a bias-free Linear (a decayed matrix) after one optimizer step per gradient, at constant lr."""
    layer = torch.nn.Linear(3, 4, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(-1, 1, 12).reshape(4, 3))
    optimizer, _ = build(name, layer, hparams, steps=1000)  # warmup 0: the peak lr from the first step
    for grad in grads:
        layer.weight.grad = grad.clone()
        optimizer.step()
    return layer.weight.detach()


REFERENCE_HPARAMS = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.99, "eps": 1e-8, "weight_decay": 0.1}


def test_nadamw_is_the_papers_nadamw_with_a_constant_nesterov_momentum():
    """optax's `scale_by_adam(nesterov=True)` with decoupled decay: m_hat = beta1 m_t / (1 - beta1^(t+1))
    + (1 - beta1) g_t / (1 - beta1^t), i.e. mu_t = beta1 at every step (torch's default warms mu_t up)."""
    optimizer, _ = build("nadamw", torch.nn.Linear(3, 4, bias=False), REFERENCE_HPARAMS, steps=10)
    assert type(optimizer) is torch.optim.NAdam
    assert all(g["momentum_decay"] == 1e9 and g["decoupled_weight_decay"] for g in optimizer.param_groups)
    lr, beta1, beta2, eps, decay = REFERENCE_HPARAMS.values()
    grads = gradients(6, (4, 3))
    expected, m, v = torch.linspace(-1, 1, 12).reshape(4, 3), torch.zeros(4, 3), torch.zeros(4, 3)
    for t, g in enumerate(grads, start=1):
        expected = expected * (1 - lr * decay)
        m, v = beta1 * m + (1 - beta1) * g, beta2 * v + (1 - beta2) * g * g
        m_hat = beta1 * m / (1 - beta1 ** (t + 1)) + (1 - beta1) * g / (1 - beta1**t)
        expected = expected - lr * m_hat / ((v / (1 - beta2**t)).sqrt() + eps)
    assert torch.allclose(steps_on_one_matrix("nadamw", REFERENCE_HPARAMS, grads), expected, rtol=0, atol=1e-6)


def test_cautious_is_adamw_with_the_papers_sign_mask():
    """Levanter's cautious.py: the Adam update u, kept where it has the gradient's sign, scaled by 1 / mean(kept);
    the decay is not masked."""
    lr, beta1, beta2, eps, decay = REFERENCE_HPARAMS.values()
    grads = gradients(6, (4, 3))
    expected, m, v = torch.linspace(-1, 1, 12).reshape(4, 3), torch.zeros(4, 3), torch.zeros(4, 3)
    masked = 0
    for t, g in enumerate(grads, start=1):
        m, v = beta1 * m + (1 - beta1) * g, beta2 * v + (1 - beta2) * g * g
        update = (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt() + eps)
        keep = (update * g > 0).float()
        masked += int((keep == 0).sum())
        expected = expected * (1 - lr * decay) - lr * update * keep / keep.mean()
    assert masked > 0  # the mask did something
    assert torch.allclose(steps_on_one_matrix("cautious", REFERENCE_HPARAMS, grads), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["adam_mini", "mars", "nadamw", "cautious"])
def test_decay_skips_the_excluded_kinds(name, tiny):
    """With zero gradients only weight decay moves a parameter: the embedding and norms stay (Adam-mini's package
    would decay the embedding, MARS's default would decay the norms), the hidden matrices and the head shrink."""
    model = build_model(tiny[0], seed=0)
    lr, weight_decay = 1e-2, 0.5
    optimizer, _ = build(name, model, {"lr": lr, "weight_decay": weight_decay}, steps=10)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for param in model.parameters():
        param.grad = torch.zeros_like(param)
    optimizer.step()
    hidden = parameter_names(model, hidden_matrices(model))
    for param_name, param in model.named_parameters():
        decayed = param_name in hidden or param_name == "lm_head.weight"
        expected = before[param_name] * (1 - lr * weight_decay) if decayed else before[param_name]
        assert torch.allclose(param, expected, rtol=1e-6, atol=0), param_name


def test_adam_mini_partitions_by_the_models_heads_in_one_process(tiny):
    model = build_model(tiny[0], seed=0)
    optimizer, _ = build("adam_mini", model, {}, steps=10)
    assert (optimizer.dim, optimizer.n_heads, optimizer.world_size) == (tiny[0]["width"], tiny[0]["heads"], 1)
    assert [len(g["params"]) for g in optimizer.param_groups] == [1] * len(list(model.parameters()))


def test_scion_is_muon_without_nesterov_and_signum_at_the_lr_ratio(tiny):
    model = build_model(tiny[0], seed=0)
    hparams = {"lr": 0.05, "scion_to_signum_lr": 0.3, "beta1": 0.8}
    optimizer, schedule = build("scion", model, hparams, steps=10)
    orthogonalised, signum = optimizer.parts
    assert type(orthogonalised) is torch.optim.Muon
    assert [(g["nesterov"], g["ns_steps"]) for g in orthogonalised.param_groups] == [(False, 10)]
    assert parameter_names(model, orthogonalised.param_groups[0]["params"]) == parameter_names(
        model, hidden_matrices(model)
    )
    assert [g["betas"] for g in signum.param_groups] == [(0.8, 0.8)] * 2
    assert [g["initial_lr"] for g in optimizer.param_groups] == pytest.approx([0.05, 0.015, 0.015])
    # Signum: each step moves a parameter by the Signum lr times the sign of the new EMA momentum.
    norm, batches = model.model.norm.weight, TrainBatches(tiny[1].train, 8, 32, seed=0)
    expected, momentum = norm.detach().clone(), torch.zeros_like(norm)
    for step in range(3):
        next_token_loss(model, batches.batch(step)).backward()
        momentum = 0.8 * momentum + 0.2 * norm.grad
        expected -= 0.015 * torch.sign(momentum)
        optimizer.step()
        optimizer.zero_grad()
    assert torch.allclose(norm, expected, rtol=0, atol=1e-7)
    for _ in range(5):
        schedule.step()
    assert signum.param_groups[0]["lr"] == pytest.approx(0.3 * orthogonalised.param_groups[0]["lr"])


def test_kron_follows_the_papers_update_schedule_and_preconditioner_lr(tiny):
    model = build_model(tiny[0], seed=0)
    hparams = {"preconditioner_lr": 0.2, "update_probability": 0.05, "update_prob_flat_start": 2}
    optimizer, schedule = build("kron", model, hparams, steps=100)
    assert {g["precondition_lr"] for g in optimizer.param_groups} == {0.2}
    batches = TrainBatches(tiny[1].train, 8, 32, seed=0)
    probabilities = []
    for step in range(8):
        train_steps(model, optimizer, schedule, batches, range(step, step + 1))
        probabilities.append(optimizer.param_groups[0]["pre_conditioner_update_probability"])
    # 1 until the flat start, then exp(-0.001 (n - flat_start)), never below update_probability (Levanter's).
    assert probabilities == pytest.approx([min(1.0, math.exp(-0.001 * (n - 2))) for n in range(8)])
    assert all(isinstance(p, float) for p in probabilities)


def test_declared_axes_agree_with_the_analysis():
    adamw = load_optimizer("adamw")
    for name, hparam in adamw.hparams.items():
        values = [0.5, 0.9] if hparam.axis == "log1m" else [0.0, 3.0] if hparam.axis in ("log1p", "linear") else [1e-3]
        assert list(hparam.to_axis(values)) == list(to_axis(name, values))
        assert hparam.from_axis(hparam.to_axis(values)) == pytest.approx(values)


def test_every_default_is_allowed():
    for plugin in BUILT_IN.values():
        resolved = resolve_hparams(plugin.name, {})
        assert set(resolved) == set(plugin.hparams) >= {"lr", "min_lr_ratio", "warmup", "clip"}
        assert all(isinstance(resolved[h.name], int) == h.integer for h in plugin.hparams.values())


@pytest.mark.parametrize(("name", "values", "message"), [
    ("lion", {"eps": 1e-8}, "optimizer 'lion' has no hyperparameter 'eps'; it has: lr, beta1, beta2,"),
    ("muon", {"momentum": 1.0}, "optimizer 'muon', momentum: 1.0 is outside [0, 1)"),
    ("soap", {"precondition_frequency": 2.5}, "optimizer 'soap', precondition_frequency: must be an integer"),
    ("soap", {"precondition_frequency": math.nan}, "precondition_frequency: nan is outside [1, inf)"),
    ("adamw", {"lr": 0}, "optimizer 'adamw', lr: 0 is outside (0, inf)"),
    ("adamw", {"lr": math.inf}, "optimizer 'adamw', lr: inf is outside (0, inf)"),
    ("adamw", {"lr": "fast"}, "optimizer 'adamw', lr: must be a number, got 'fast'"),
    ("sgd", {}, f"unknown optimizer 'sgd'; built in: {', '.join(BUILT_IN)}, or 'module:function'"),
    ("no_such_module:opt", {}, "cannot import module 'no_such_module'"),
    ("user_optimizer:not_declared", {}, "'user_optimizer:not_declared' is not an optimizer declared with"),
])
def test_bad_settings_fail_in_one_line(name, values, message):
    with pytest.raises(ParamsError) as error:
        check_hparams(name, values)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_errors_name_where_the_setting_is():
    with pytest.raises(ParamsError, match=r"^optimizers\.lion\.grid: optimizer 'lion', beta2: -0\.1 is outside"):
        check_hparams("lion", {"beta2": -0.1}, where="optimizers.lion.grid")


def test_batch_size_is_a_run_setting_every_optimizer_accepts():
    assert resolve_hparams("lion", {"batch_size": 64, "warmup": 3.0})["batch_size"] == 64
    assert resolve_hparams("lion", {"warmup": 3.0})["warmup"] == 3


def test_identity_names_the_plugin_its_libraries_and_code():
    identity = optimizer_identity("lion")
    assert identity["name"] == "lion"
    assert identity["libraries"] == {"pytorch-optimizer": "4.1.0"} and len(identity["code"]) == 16
    user = optimizer_identity("user_optimizer:sgd")
    assert user["name"] == "user_optimizer:sgd" and user["libraries"] == {} and user["code"] != identity["code"]


def test_every_declared_axis_is_known_to_the_analysis():
    for plugin in BUILT_IN.values():
        for name, hparam in plugin.hparams.items():
            assert axis_of(name) == hparam.axis, (plugin.name, name)
