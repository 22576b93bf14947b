"""Compile and memory in a long-lived worker: many (width, micro-batch) layouts in one process stay compiled,
and a run's model is freed before the next attempt or run starts."""

from __future__ import annotations

import logging
import weakref

import pytest
import torch
import torch._dynamo

from optsweep.train import loop as train_module

# The law phase's layouts in miniature: two widths, each at the micro-batches an OOM halving walks through.
LAYOUTS = [(scale, micro) for scale in ("a", "b") for micro in (8, 4, 2, 1)]


@pytest.fixture
def dynamo_without_codegen(monkeypatch):
    """`model.compile()` with dynamo's own "eager" backend: the same graph capture, guards, cache and
    recompile limit as inductor, without its minutes of C++ builds per graph on this CPU."""
    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compile_module(self, backend="eager", **kw))
    torch._dynamo.reset()  # no graphs left from earlier tests
    torch._dynamo.utils.counters.clear()  # which reset() leaves counting
    yield
    torch._dynamo.reset()


def _compiled_spec(run_spec, scale: str, micro: int) -> dict:
    spec = run_spec(scale, train={"compile": True, "micro_batch_size": micro, "device": "cpu"})
    spec["scale"].update(tokens=spec["scale"]["batch_size"] * spec["scale"]["seq_len"] * 8, steps=8)  # short
    return spec


def test_the_law_phases_layouts_stay_compiled_in_one_worker(run_spec, dynamo_without_codegen, caplog, capfd):
    caplog.set_level(logging.WARNING, logger="torch._dynamo")
    for scale, micro in LAYOUTS:
        assert train_module.train(_compiled_spec(run_spec, scale, micro))["status"] == "ok"
    assert not [r for r in caplog.records if "recompile_limit" in r.getMessage()]
    assert "eager" not in capfd.readouterr().err
    # Whole micro-batches only: one train and one eval graph per layout, none for an eval remainder.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2 * len(LAYOUTS)


def test_a_shape_that_falls_back_to_eager_says_so_in_one_line(run_spec, dynamo_without_codegen, monkeypatch,
                                                             capfd):
    monkeypatch.setattr(train_module, "RECOMPILE_LIMIT", 2)
    with torch._dynamo.config.patch(recompile_limit=2):
        for scale, micro in LAYOUTS[:2]:  # four graphs of one function, over a limit of two
            assert train_module.train(_compiled_spec(run_spec, scale, micro))["status"] == "ok"
    lines = [line for line in capfd.readouterr().err.splitlines() if "recompile" in line]
    assert len(lines) == 1 and lines[0].startswith("optsweep train: ") and "eager" in lines[0], lines


@pytest.mark.parametrize("compile", [False, True])
def test_the_out_of_memory_retry_starts_with_the_failed_attempts_model_freed(run_spec, dynamo_without_codegen,
                                                                            monkeypatch, compile):
    real_step = train_module.TrainingRun.step
    failed_models: list[weakref.ref] = []
    alive_when_the_retry_started: list[bool] = []

    def out_of_memory_at_the_full_micro_batch(run):
        if run.micro_batch == 8:
            failed_models.append(weakref.ref(run.model))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        if not alive_when_the_retry_started:
            alive_when_the_retry_started.append(any(model() is not None for model in failed_models))
        return real_step(run)

    monkeypatch.setattr(train_module.TrainingRun, "step", out_of_memory_at_the_full_micro_batch)
    result = train_module.train(run_spec("a", train={"compile": compile, "device": "cpu"}))
    assert (result["status"], result["oom_halvings"], len(failed_models)) == ("ok", 1, 1)
    assert alive_when_the_retry_started == [False]


def test_the_next_run_of_a_layout_starts_with_the_last_model_freed_and_compiles_nothing(
        run_spec, dynamo_without_codegen, monkeypatch):
    real_step = train_module.TrainingRun.step
    models: list[weakref.ref] = []
    previous_alive_at_first_step: list[bool] = []

    def remember_the_model(run):
        if run.steps_done == 0:
            previous_alive_at_first_step.append(any(model() is not None for model in models))
            models.append(weakref.ref(run.model))
        return real_step(run)

    monkeypatch.setattr(train_module.TrainingRun, "step", remember_the_model)
    for _ in range(2):
        train_module.train(_compiled_spec(run_spec, "a", 8))
    assert previous_alive_at_first_step == [False, False]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2  # the second run reused the first's
