"""`optsweep bench`: training throughput of our trainer next to a plain Hugging Face loop, in one process.

Both loops train the same model (same config and init) on the same batches. "optsweep" is the trainer's own
`TrainingRun.step` (bf16 autocast, fused AdamW and torch.compile on CUDA; causal SDPA without a mask and the chunked
loss everywhere). "hf_eager_fp32" is the loop a Hugging Face user writes first: stock `LlamaForCausalLM`
with transformers' `sdpa`, fp32, no compile, the model's own `labels=` loss, unfused AdamW.

Two modes:
- `run_bench` (no `--suite`): one scale of the study, both loops in alternating rounds (the CPU box is
  shared: alternating rounds keep slow spells from landing on one loop only).
- `run_suite` (`--suite gpu`, or `quick` for a tiny CPU-sized version of the same): the brief's scales,
  concurrency, a profile and loss curves, in optsweep.train.bench_suite.
"""

from __future__ import annotations

import datetime as dt
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import transformers

from ..data.batches import TrainBatches, load_shards
from ..data.prepare import ensure_prepared
from ..params.settings import ParamsError, StudyParams
from ..runs.trainer import make_run_spec
from .loop import Runtime, TrainingRun, configure_determinism, resolve_runtime
from .model import build_hf_model, count_params

WARMUP_STEPS = 3  # untimed steps first: CUDA context, kernel autotuning, torch.compile
ROUNDS = 3  # timed rounds per loop; rows report the median round and the range
# bf16 dense tensor-core peak (FLOP/s) by device-name fragment, most specific first (first match wins).
# Datasheet figures without sparsity: H100 SXM 989.4 T, H100 PCIe 756 T, H100 NVL 835 T; H200 SXM as H100 SXM.
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H200 NVL", 835e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("A100", 312e12),
)
SCALE_FIELDS = ("name", "width", "depth", "heads", "seq_len", "batch_size", "vocab_size", "n_params", "flops_per_token")

Step = Callable[[], torch.Tensor]  # one optimizer step; returns the loss on the device


def peak_flops(device_name: str) -> float | None:
    """The bf16 dense peak of a device by its CUDA name; None for the CPU and unknown devices."""
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in device_name), None)


def hf_eager_step(
    spec: dict[str, Any], batches: TrainBatches, runtime: Runtime, micro_batch: int | None = None
) -> Step:
    """The plain loop's step: fp32 stock model, `labels=` loss, default (unfused) AdamW, clipping.

    `micro_batch` splits each batch into passes whose gradients add up (for batches that do not fit at once).
    """
    hparams = spec["hparams"]
    model = build_hf_model(spec["scale"], seed=spec["seed"]).to(runtime.device).train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=hparams["lr"], betas=(hparams["beta1"], hparams["beta2"]),
        eps=hparams["eps"], weight_decay=hparams["weight_decay"],
    )
    step = 0

    def one_step() -> torch.Tensor:
        nonlocal step
        batch = batches.batch(step)[:, :-1].to(runtime.device)
        step += 1
        total = torch.zeros((), device=runtime.device)
        for inputs in batch.split(micro_batch or len(batch)):
            loss = model(input_ids=inputs, labels=inputs).loss * (len(inputs) / len(batch))
            loss.backward()
            total += loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), hparams["clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return total

    return one_step


@dataclass
class Timing:
    """Seconds per round of `steps` timed steps, the process's minor page faults during them (first touches of
    memory fresh from the OS: on the CPU they cost as much as the small matmuls of the tiny scales, see
    issue 12), and the loop's peak GPU memory (GB; None on the CPU)."""

    steps: int
    rounds: list[float]
    page_faults: int = 0
    peak_memory_gb: float | None = None

    def add_round(self, step: Step) -> None:
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        self.rounds.append(run_rounds(step, self.steps))
        self.page_faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults


def run_rounds(step: Step, steps: int) -> float:
    """Seconds for `steps` steps, waiting for the device at the end."""
    started = time.perf_counter()
    for _ in range(steps):
        loss = step()
    loss.item()
    return time.perf_counter() - started


def time_loops(
    factories: dict[str, Callable[[], Step]], steps: int, rounds: int, runtime: Runtime
) -> dict[str, Timing]:
    """Time each loop over `rounds` rounds of `steps` steps after `WARMUP_STEPS` untimed ones.

    On CUDA the loops run one after the other, each alone on the device, so each row's peak memory is its
    own. On the CPU they take turns round by round in one process: the box is shared, and alternating
    keeps a slow spell from landing on one loop only.
    """
    timings: dict[str, Timing] = {}
    if runtime.device.type == "cuda":
        for name, factory in factories.items():
            step = factory()
            for _ in range(WARMUP_STEPS):
                step()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            timings[name] = timing = Timing(steps, [])
            for _ in range(rounds):
                timing.add_round(step)
            timing.peak_memory_gb = torch.cuda.max_memory_allocated() / 1e9
            del step  # frees the loop's memory before the next one is measured
            torch.cuda.empty_cache()
        return timings
    loops = {name: factory() for name, factory in factories.items()}
    for step in loops.values():
        for _ in range(WARMUP_STEPS):
            step()
    timings = {name: Timing(steps, []) for name in loops}
    for _ in range(rounds):
        for name, step in loops.items():
            timings[name].add_round(step)
    return timings


def bench_row(name: str, timing: Timing, scale: dict[str, Any], runtime: Runtime, **settings: Any) -> dict[str, Any]:
    """One row: the loop's settings, tokens/s (median round, and range) and ms/step; MFU and memory on CUDA."""
    tokens = timing.steps * scale["batch_size"] * scale["seq_len"]
    median, fastest, slowest = statistics.median(timing.rounds), min(timing.rounds), max(timing.rounds)
    row = {"trainer": name, **settings, "tokens_per_s": round(tokens / median)}
    row["tokens_per_s_range"] = [round(tokens / slowest), round(tokens / fastest)]
    row["ms_per_step"] = round(1e3 * median / timing.steps, 2)
    row["page_faults_per_step"] = round(timing.page_faults / (timing.steps * len(timing.rounds)))
    if runtime.device.type == "cuda":
        peak = peak_flops(runtime.name)
        row["mfu"] = round(scale["flops_per_token"] * tokens / median / peak, 4) if peak else None
        row["peak_memory_gb"] = round(timing.peak_memory_gb, 2)
    return row


def provenance(runtime: Runtime) -> dict[str, Any]:
    return {
        "device": runtime.name,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "threads": torch.get_num_threads(),
    }


def scale_summary(spec: dict[str, Any], total_params: int) -> dict[str, Any]:
    return {**{key: spec["scale"][key] for key in SCALE_FIELDS}, "total_params": total_params}


def run_bench(params: StudyParams, scale_name: str | None, steps: int, rounds: int = ROUNDS) -> dict[str, Any]:
    """Time `rounds` x `steps` optimizer steps of each loop at one scale (default: the first phase-1 scale)."""
    scale_name = scale_name or next(iter(params.scales))
    params.scale(scale_name)
    if steps < 1:
        raise ParamsError(f"--steps: must be at least 1, got {steps}")
    if rounds < 1:
        raise ParamsError(f"--rounds: must be at least 1, got {rounds}")
    data = ensure_prepared(params)
    baseline, _ = params.scale_space(scale_name)
    spec = make_run_spec(params, scale_name, baseline, data)
    runtime = resolve_runtime(spec["train"])
    configure_determinism(runtime, spec["train"]["threads_per_worker"])
    shards = load_shards(data)
    batches = TrainBatches(shards.train, spec["scale"]["batch_size"], spec["scale"]["seq_len"], data["seed"])

    timings = time_loops({
        "optsweep": lambda: TrainingRun(spec, shards, runtime).step,
        "hf_eager_fp32": lambda: hf_eager_step(spec, batches, runtime),
    }, steps, rounds, runtime)
    rows = [
        bench_row("optsweep", timings["optsweep"], spec["scale"], runtime, precision=runtime.precision,
                  compile=spec["train"]["compile"], fused_adamw=runtime.device.type == "cuda"),
        bench_row("hf_eager_fp32", timings["hf_eager_fp32"], spec["scale"], runtime,
                  precision="fp32", compile=False, fused_adamw=False),
    ]
    _, total_params = count_params(build_hf_model(spec["scale"], seed=spec["seed"]))
    return {
        **provenance(runtime),
        "scale": scale_summary(spec, total_params),
        "timed_steps": steps,
        "rounds": rounds,
        "rows": rows,
        "speedup": round(rows[0]["tokens_per_s"] / rows[1]["tokens_per_s"], 2),
    }
