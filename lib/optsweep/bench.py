"""`optsweep bench`: training throughput of our trainer next to a plain Hugging Face loop, in one process.

Both rows train the same model (same config and init) on the same batches. "optsweep" is the trainer's own
`Run.step` with the study's settings (bf16 autocast, fused AdamW and optional torch.compile on CUDA).
"hf_eager_fp32" is the loop a Hugging Face user writes first: fp32, no autocast, no compile, the model's
own loss, unfused AdamW. On CUDA each row also reports MFU against the device's bf16 dense peak.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any, Callable

import torch
import transformers

from .config import ParamsError, StudyParams
from .batches import TrainBatches, load_shards
from .data import ensure_prepared
from .model import build_model, count_params
from .train import Run, Runtime, configure_determinism, resolve_runtime
from .trainer import make_run_spec

WARMUP_STEPS = 3  # untimed steps first: CUDA context, kernel autotuning, torch.compile
# bf16 dense tensor-core peak (FLOP/s) by device-name fragment.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
SCALE_FIELDS = ("name", "width", "depth", "heads", "seq_len", "batch_size", "vocab_size", "n_params", "flops_per_token")


def peak_flops(device_name: str) -> float | None:
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in device_name), None)


def hf_eager_step(spec: dict[str, Any], batches: TrainBatches, runtime: Runtime) -> Callable[[], torch.Tensor]:
    """The plain loop's step: fp32 model, `labels=` loss, default (unfused) AdamW, clipping."""
    hparams = spec["hparams"]
    model = build_model(spec["scale"], seed=spec["seed"]).to(runtime.device).train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=hparams["lr"], betas=(hparams["beta1"], hparams["beta2"]),
        eps=hparams["eps"], weight_decay=hparams["weight_decay"],
    )
    step = 0

    def one_step() -> torch.Tensor:
        nonlocal step
        inputs = batches.batch(step)[:, :-1].to(runtime.device)
        step += 1
        loss = model(input_ids=inputs, labels=inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), hparams["clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return one_step


def time_steps(step: Callable[[], torch.Tensor], steps: int, runtime: Runtime) -> tuple[float, float | None]:
    """(seconds for `steps` timed steps after the warmup ones, peak GPU memory in GB or None)."""
    cuda = runtime.device.type == "cuda"
    for _ in range(WARMUP_STEPS):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        loss = step()
    loss.item()  # waits for the last step
    seconds = time.perf_counter() - started
    return seconds, torch.cuda.max_memory_allocated() / 1e9 if cuda else None


def bench_row(
    name: str, timing: tuple[float, float | None], steps: int, spec: dict[str, Any], runtime: Runtime, **settings: Any
) -> dict[str, Any]:
    """One row: the loop's settings, tokens/s and ms/step; on CUDA also MFU and peak memory."""
    (seconds, memory), scale = timing, spec["scale"]
    tokens_per_s = steps * scale["batch_size"] * scale["seq_len"] / seconds
    row = {"trainer": name, **settings, "tokens_per_s": round(tokens_per_s)}
    row["ms_per_step"] = round(1e3 * seconds / steps, 2)
    peak = peak_flops(runtime.name)
    if runtime.device.type == "cuda":
        row["mfu"] = round(scale["flops_per_token"] * tokens_per_s / peak, 4) if peak else None
        row["peak_memory_gb"] = round(memory, 2)
    return row


def run_bench(params: StudyParams, scale_name: str | None, steps: int) -> dict[str, Any]:
    """Time `steps` optimizer steps of each loop at one scale (default: the first phase-1 scale)."""
    scale_name = scale_name or next(iter(params.scales))
    params.scale(scale_name)
    if steps < 1:
        raise ParamsError(f"--steps: must be at least 1, got {steps}")
    data = ensure_prepared(params)
    baseline, _ = params.scale_space(scale_name)
    spec = make_run_spec(params, scale_name, baseline, data)
    runtime = resolve_runtime(spec["train"])
    configure_determinism(runtime, spec["train"]["threads_per_worker"])
    shards = load_shards(data)
    batches = TrainBatches(shards.train, spec["scale"]["batch_size"], spec["scale"]["seq_len"], data["seed"])

    ours = Run(spec, shards, runtime)
    _, total_params = count_params(ours.model)
    ours_timing = time_steps(ours.step, steps, runtime)
    del ours  # frees its GPU memory before the second loop is measured
    plain_timing = time_steps(hf_eager_step(spec, batches, runtime), steps, runtime)
    rows = [
        bench_row("optsweep", ours_timing, steps, spec, runtime, precision=runtime.precision,
                  compile=spec["train"]["compile"], fused_adamw=runtime.device.type == "cuda"),
        bench_row("hf_eager_fp32", plain_timing, steps, spec, runtime,
                  precision="fp32", compile=False, fused_adamw=False),
    ]
    return {
        "device": runtime.name,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "threads": torch.get_num_threads(),
        "scale": {**{key: spec["scale"][key] for key in SCALE_FIELDS}, "total_params": total_params},
        "timed_steps": steps,
        "rows": rows,
        "speedup": round(rows[0]["tokens_per_s"] / rows[1]["tokens_per_s"], 2),
    }
