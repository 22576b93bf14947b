"""The default trainer through its public entry point, `optsweep.train.train(spec)`."""

from __future__ import annotations

import json
import math

import pytest
import torch

from optsweep.runs.trainer import code_identity, is_diverged
from optsweep.train.loop import TRAINER_VERSION, train

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def baseline_result(run_spec):
    return train(run_spec("a"))


def test_loss_decreases_well_below_uniform(run_spec):
    spec = run_spec("a")
    spec["scale"].update(tokens=32768, steps=128)  # a longer run of the same model
    result = train(spec)
    uniform = math.log(spec["data"]["vocab_size"])
    curve = [loss for _, loss in result["eval_curve"]]
    assert result["status"] == "ok"
    assert result["train_curve"][0][1] == pytest.approx(uniform, abs=0.3)  # starts near uniform
    assert curve == sorted(curve, reverse=True)
    assert result["loss"] == curve[-1] < uniform - 1.0


def test_result_fields(baseline_result, run_spec, prepared_data):
    spec, result = run_spec("a"), baseline_result
    json.dumps(result, allow_nan=False)
    assert result["steps"] == spec["scale"]["steps"] == 64
    assert result["tokens"] == 64 * 8 * 32 == spec["scale"]["tokens"]
    assert result["flops"] == spec["scale"]["flops_per_token"] * result["tokens"]
    assert result["n_params"] == spec["scale"]["n_params"] and result["total_params"] > result["n_params"]
    assert [step for step, _ in result["eval_curve"]] == [32, 64]  # eval_points: 2, the last at the budget
    assert result["train_curve"][-1][0] == 63
    assert result["tokens_per_s"] > 0 and result["wall_s"] > 0
    assert (result["device"], result["precision"], result["diverged_at_step"]) == ("cpu", "fp32", None)
    assert result["provenance"] == {
        "data_hash": prepared_data["hash"], "tokenizer": "bpe-512", "code": code_identity("optsweep.train:train"),
        "trainer_version": TRAINER_VERSION, "optimizer": spec["optimizer"], "seed": 0, "batch_seed": 0,
        "torch": torch.__version__,
        "transformers": result["provenance"]["transformers"],
    }
    assert (result["micro_batch_size"], result["oom_halvings"], result["resumed_from"]) == (8, 0, [])


def test_identical_specs_give_identical_results(baseline_result, run_spec):
    again = train(run_spec("a"))
    assert again["loss"] == baseline_result["loss"]  # bitwise
    assert again["train_curve"] == baseline_result["train_curve"]
    assert train(run_spec("a", seed=1))["loss"] != baseline_result["loss"]


def test_configs_share_init_and_batches(baseline_result, run_spec):
    other = train(run_spec("a", lr=3e-3, beta2=0.99))
    assert other["train_curve"][0] == baseline_result["train_curve"][0]  # same init, same first batch
    assert other["loss"] != baseline_result["loss"]


def test_huge_lr_ends_diverged_without_raising(run_spec):
    result = train(run_spec("a", lr=30.0))
    assert result["status"] == "diverged" and result["loss"] is None and is_diverged(result)
    assert result["diverged_at_step"] is not None and result["steps"] < 64
    json.dumps(result, allow_nan=False)


def test_divergence_threshold_applies_after_warmup(run_spec):
    result = train(run_spec("a", warmup=10, train={"diverge_above": 1.0}))
    assert result["status"] == "diverged" and result["diverged_at_step"] == 10


def test_eval_tokens_and_micro_batches(baseline_result, run_spec):
    accumulated = train(run_spec("a", train={"micro_batch_size": 3}))
    assert accumulated["loss"] == pytest.approx(baseline_result["loss"], abs=1e-3)
    partial = train(run_spec("a", train={"eval_tokens": 320}))
    assert partial["loss"] != baseline_result["loss"]


def test_batch_size_override(run_spec):
    result = train(run_spec("a", batch_size=4))
    assert result["steps"] == 128 and result["tokens"] == 16384


def test_bf16_autocast_keeps_the_loss(baseline_result, run_spec):
    result = train(run_spec("a", train={"precision": "bf16"}))
    assert result["precision"] == "bf16" and result["loss"] != baseline_result["loss"]
    assert result["loss"] == pytest.approx(baseline_result["loss"], abs=0.05)


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("compile", [False, True])
def test_gpu_bf16_fused(run_spec, compile):
    result = train(run_spec("a", train={"device": "cuda", "compile": compile}))
    assert result["status"] == "ok" and result["precision"] == "bf16" and result["device"] != "cpu"
    assert result["loss"] < math.log(512)


@cuda
@pytest.mark.gpu
def test_gpu_fp32_matches_cpu_closely(run_spec, baseline_result):
    result = train(run_spec("a", train={"device": "cuda", "precision": "fp32"}))
    assert result["loss"] == pytest.approx(baseline_result["loss"], abs=0.05)
