"""`optsweep bench --suite`: the brief's 0.1B and ~30M scales on one device, side by side: MFU and peak memory, the
aggregate tokens/s of 1, 2 and 4 concurrent runs, a short profile (top kernels, which attention kernel ran) and a
bf16-compiled vs fp32-eager loss curve, written as JSON and a markdown table. The loops and their timing are
optsweep.train.bench's.
"""

from __future__ import annotations

import json
import multiprocessing
import queue
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.batches import TrainBatches, load_shards
from ..data.prepare import ensure_prepared
from ..params.sections import Scale
from ..params.settings import ParamsError, StudyParams, round_sig
from ..runs.trainer import make_run_spec
from .bench import (
    ROUNDS,
    WARMUP_STEPS,
    Step,
    bench_row,
    hf_eager_step,
    provenance,
    run_rounds,
    scale_summary,
    time_loops,
)
from .loop import Runtime, TrainingRun, configure_determinism, resolve_runtime
from .model import build_hf_model, count_params


@dataclass(frozen=True)
class Suite:
    """What `run_suite` measures. `gpu` is the issue's list; `quick` runs the same code at toy sizes."""

    scales: dict[str, Scale]  # throughput rows, ours next to the plain loop
    vocab_size: int
    steps: int  # timed steps per round
    concurrency_scale: str
    concurrency: tuple[int, ...]  # concurrent runs on the one device
    profile_scale: str
    profile_steps: int
    curve_scale: str
    curve_steps: int
    needs_cuda: bool = False  # hours on a CPU: refused there


def brief_scale(width: int, depth: int, heads: int, seq_len: int, batch_size: int) -> Scale:
    return Scale(width=width, depth=depth, heads=heads, seq_len=seq_len, batch_size=batch_size,
                 tokens=batch_size * seq_len * 10_000)


SUITES = {
    "gpu": Suite(
        scales={
            "0.1B": brief_scale(width=512, depth=32, heads=8, seq_len=1024, batch_size=64),  # 134M non-embedding
            "30M": brief_scale(width=384, depth=12, heads=6, seq_len=1024, batch_size=64),  # 28M non-embedding
        },
        vocab_size=32_000, steps=10, concurrency_scale="30M", concurrency=(1, 2, 4),
        profile_scale="0.1B", profile_steps=3, curve_scale="30M", curve_steps=200, needs_cuda=True,
    ),
    "quick": Suite(
        scales={
            "tiny-a": brief_scale(width=32, depth=2, heads=2, seq_len=32, batch_size=4),
            "tiny-b": brief_scale(width=48, depth=1, heads=2, seq_len=32, batch_size=4),
        },
        vocab_size=2048, steps=2, concurrency_scale="tiny-a", concurrency=(1, 2),
        profile_scale="tiny-a", profile_steps=1, curve_scale="tiny-a", curve_steps=4,
    ),
}


def suite_spec(params: StudyParams, data: dict[str, Any], suite: Suite, name: str) -> dict[str, Any]:
    """A run spec for one of the suite's scales: the study's baseline, lr moved by its transfer rule."""
    scale = suite.scales[name]
    baseline = params.hparams_with({}, key="baseline")
    hparams = {**baseline, "lr": round_sig(baseline["lr"] * params.study.lr_transfer.factor(scale.width))}
    spec = make_run_spec(params, next(iter(params.scales)), hparams, data)
    spec["scale"] = {"name": name, **scale.derived(suite.vocab_size)}
    return spec


def with_settings(spec: dict[str, Any], **train: Any) -> dict[str, Any]:
    return {**spec, "train": {**spec["train"], **train}}


def first_step_that_fits(make_step: Callable[[int], Step], micro_batch: int) -> Step | None:
    """A loop at `micro_batch` sequences per pass that has done one step, or None if that ran out of memory."""
    try:
        step = make_step(micro_batch)
        step().item()
        return step
    except torch.cuda.OutOfMemoryError:
        step = None  # drops the model and its optimizer before the cache is emptied
        torch.cuda.empty_cache()
        return None


def fitted(make_step: Callable[[int], Step], batch_size: int, runtime: Runtime, chosen: dict[str, int],
           name: str) -> Step:
    """The loop at the largest micro-batch that fits on CUDA (the batch, halved until a step fits; the whole
    batch on the CPU), recorded in `chosen[name]`."""
    micro_batch = batch_size
    step = make_step(micro_batch) if runtime.device.type != "cuda" else None
    while step is None:
        step = first_step_that_fits(make_step, micro_batch)
        if step is None and micro_batch == 1:
            raise RuntimeError(f"{name}: one sequence per pass does not fit in GPU memory")
        micro_batch = micro_batch if step else micro_batch // 2
    chosen[name] = micro_batch
    return step


def throughput_rows(params: StudyParams, data: dict[str, Any], suite: Suite, name: str,
                    runtime: Runtime) -> list[dict[str, Any]]:
    """Ours (bf16 + compile on CUDA) next to the plain fp32 eager loop at one scale, micro-batches fitted."""
    cuda = runtime.device.type == "cuda"
    spec = with_settings(suite_spec(params, data, suite, name), compile=cuda)
    ours_runtime = Runtime(runtime.device, "bf16" if cuda else "fp32")
    shards = load_shards(data)
    batches = TrainBatches(shards.train, spec["scale"]["batch_size"], spec["scale"]["seq_len"], data["seed"])

    def ours(micro: int) -> Step:
        return TrainingRun(with_settings(spec, micro_batch_size=micro), shards, ours_runtime).step

    def plain(micro: int) -> Step:
        return hf_eager_step(spec, batches, runtime, micro)

    batch_size, micro = spec["scale"]["batch_size"], {}
    timings = time_loops({"optsweep": lambda: fitted(ours, batch_size, runtime, micro, "optsweep"),
                          "hf_eager_fp32": lambda: fitted(plain, batch_size, runtime, micro, "hf_eager_fp32")},
                         suite.steps, ROUNDS, runtime)
    _, total_params = count_params(build_hf_model(spec["scale"], seed=spec["seed"]))
    scale = scale_summary(spec, total_params)
    return [
        {"scale": scale, **bench_row("optsweep", timings["optsweep"], spec["scale"], runtime,
                                     precision=ours_runtime.precision, compile=cuda, fused_adamw=cuda,
                                     micro_batch=micro["optsweep"])},
        {"scale": scale, **bench_row("hf_eager_fp32", timings["hf_eager_fp32"], spec["scale"], runtime,
                                     precision="fp32", compile=False, fused_adamw=False,
                                     micro_batch=micro["hf_eager_fp32"])},
    ]


def concurrent_worker(spec: dict[str, Any], precision: str, steps: int, barrier: Any, results: Any) -> None:
    """One of N runs sharing the device: warm up, wait for the others, time `steps` steps."""
    runtime = Runtime(resolve_runtime(spec["train"]).device, precision)
    configure_determinism(runtime, spec["train"]["threads_per_worker"])
    run = TrainingRun(spec, load_shards(spec["data"]), runtime)
    for _ in range(WARMUP_STEPS):
        run.step()
    barrier.wait()
    results.put(run_rounds(run.step, steps))


def collect(results: Any, workers: list[Any]) -> list[float]:
    """One result per worker; a worker that dies stops the others and raises instead of waiting forever."""
    seconds: list[float] = []
    while len(seconds) < len(workers):
        try:
            seconds.append(results.get(timeout=5))
        except queue.Empty:
            if any(worker.exitcode not in (None, 0) for worker in workers):
                for worker in workers:
                    worker.terminate()
                raise RuntimeError("a concurrent bench run died; see its traceback above") from None
    for worker in workers:
        worker.join()
    return seconds


def concurrency_rows(params: StudyParams, data: dict[str, Any], suite: Suite, runtime: Runtime,
                     micro_batch: int) -> list[dict[str, Any]]:
    """Aggregate tokens/s of N runs of our trainer at once on the one device (separate processes).

    `micro_batch` is what one run alone may use; N runs take 1/N of it each."""
    cuda = runtime.device.type == "cuda"
    spec = with_settings(suite_spec(params, data, suite, suite.concurrency_scale), compile=cuda,
                         device=runtime.device.type)
    tokens = suite.steps * spec["scale"]["batch_size"] * spec["scale"]["seq_len"]
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    rows = []
    for runs in suite.concurrency:
        spec = with_settings(spec, micro_batch_size=max(1, micro_batch // runs))  # the memory is shared
        barrier, results = context.Barrier(runs), context.Queue()
        workers = [context.Process(target=concurrent_worker, daemon=True,
                                   args=(spec, "bf16" if cuda else "fp32", suite.steps, barrier, results))
                   for _ in range(runs)]
        for worker in workers:
            worker.start()
        seconds = collect(results, workers)
        per_run = [tokens / s for s in seconds]
        rows.append({"scale": suite.concurrency_scale, "runs": runs, "micro_batch": spec["train"]["micro_batch_size"],
                     "tokens_per_s_per_run": [round(t) for t in per_run],
                     "aggregate_tokens_per_s": round(sum(per_run))})
    return rows


ATTENTION_KERNELS = (  # (what ran, name fragment) in lower-cased op and kernel names; the model has no convs
    ("flash", "flash"),
    ("cudnn", "cudnn"),
    ("memory-efficient", "efficient_attention"),
    ("math (unfused)", "_scaled_dot_product_attention_math"),
)


def attention_kernels(names: list[str]) -> list[str]:
    """Which SDPA backends appear among the profiled kernel and op names."""
    lowered = [name.lower() for name in names]
    return sorted({kind for kind, fragment in ATTENTION_KERNELS if any(fragment in name for name in lowered)})


def profile_rows(params: StudyParams, data: dict[str, Any], suite: Suite, runtime: Runtime, micro_batch: int,
                 top: int = 15) -> dict[str, Any]:
    """A few steps of our trainer under torch.profiler: top kernels by device time, attention backend."""
    from torch.profiler import ProfilerActivity, profile

    cuda = runtime.device.type == "cuda"
    spec = with_settings(suite_spec(params, data, suite, suite.profile_scale), compile=cuda,
                         micro_batch_size=micro_batch)
    run = TrainingRun(spec, load_shards(data), Runtime(runtime.device, "bf16" if cuda else "fp32"))
    for _ in range(WARMUP_STEPS):
        run.step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as profiler:
        run_rounds(run.step, suite.profile_steps)
    events = all_events = profiler.key_averages()
    if cuda:
        events = [e for e in events if e.self_device_time_total > 0]  # kernels, not host-side ops
    time_of = (lambda e: e.self_device_time_total) if cuda else (lambda e: e.self_cpu_time_total)
    total = sum(time_of(e) for e in events) or 1
    ranked = sorted(events, key=time_of, reverse=True)
    return {
        "scale": suite.profile_scale,
        "steps": suite.profile_steps,
        "measure": "self CUDA time" if cuda else "self CPU time",
        "top": [{"name": e.key[:120], "ms": round(time_of(e) / 1e3, 2), "share": round(time_of(e) / total, 4),
                 "calls": e.count} for e in ranked[:top]],
        "attention": attention_kernels([e.key for e in all_events]),  # aten ops name the SDPA backend
    }


def curve_rows(params: StudyParams, data: dict[str, Any], suite: Suite, runtime: Runtime,
               micro_batch: int) -> dict[str, Any]:
    """Train loss per step of our trainer, bf16 (+ compile on CUDA) and fp32 eager, same init and batches."""
    cuda = runtime.device.type == "cuda"
    spec = suite_spec(params, data, suite, suite.curve_scale)
    spec["scale"] = {**spec["scale"], "steps": suite.curve_steps}  # the lr schedule ends at the last step
    curves = {}
    for name, precision, compile_ in (("bf16_compiled" if cuda else "bf16_eager", "bf16", cuda),
                                      ("fp32_eager", "fp32", False)):
        run = TrainingRun(with_settings(spec, compile=compile_, micro_batch_size=micro_batch), load_shards(data),
                  Runtime(runtime.device, precision))
        curves[name] = torch.stack([run.step() for _ in range(suite.curve_steps)]).tolist()
        del run
    tail = max(1, suite.curve_steps // 20)  # the end of a curve: the mean of its last 5% of steps
    ends = {name: statistics.fmean(losses[-tail:]) for name, losses in curves.items()}
    low, reference = ends[next(iter(ends))], ends["fp32_eager"]
    return {"scale": suite.curve_scale, "steps": suite.curve_steps, "end_mean_of_last": tail,
            "end": {name: round(value, 4) for name, value in ends.items()},
            "relative_difference": round(abs(low - reference) / reference, 4), "curves": curves}


PARTS = ("throughput", "concurrency", "profile", "curves")


def plain_micro_batch(params: StudyParams, data: dict[str, Any], suite: Suite, name: str, runtime: Runtime) -> int:
    """The plain fp32 loop's micro-batch at a scale: the most memory-hungry loop, so a safe size for all."""
    spec = suite_spec(params, data, suite, name)
    batches = TrainBatches(load_shards(data).train, spec["scale"]["batch_size"], spec["scale"]["seq_len"], data["seed"])
    chosen: dict[str, int] = {}
    fitted(lambda micro: hf_eager_step(spec, batches, runtime, micro), spec["scale"]["batch_size"], runtime, chosen,
           "hf_eager_fp32")
    if runtime.device.type == "cuda":
        torch.cuda.empty_cache()
    return chosen["hf_eager_fp32"]


def run_suite(params: StudyParams, suite_name: str, out: Path, parts: tuple[str, ...] = PARTS) -> dict[str, Any]:
    """The `parts` of `SUITES[suite_name]` on this process's device; writes `<suite>-<device>.json` and `.md`.

    Micro-batches: each throughput row fits its own; the other parts take the plain loop's (fitted here if
    the throughput part did not run), and concurrent runs split it between them.
    """
    if suite_name not in SUITES:
        raise ParamsError(f"--suite: unknown suite {suite_name!r}; choose from {', '.join(SUITES)}")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise ParamsError(f"--parts: unknown or empty {','.join(unknown)!r}; choose from {','.join(PARTS)}")
    suite = SUITES[suite_name]
    if suite.needs_cuda and not torch.cuda.is_available():
        raise ParamsError(f"--suite {suite_name}: needs a CUDA device and torch sees none; on a CPU use --suite quick")
    data = ensure_prepared(params)
    if data["vocab_size"] > suite.vocab_size:
        raise ParamsError(f"--suite {suite_name}: the study's vocabulary ({data['vocab_size']}) exceeds the "
                          f"suite's model vocabulary ({suite.vocab_size})")
    runtime = resolve_runtime(params.study.train.model_dump())
    configure_determinism(runtime, params.study.train.threads_per_worker)
    report: dict[str, Any] = {**provenance(runtime), "suite": suite_name}
    micro: dict[str, int] = {}
    if "throughput" in parts:
        report["throughput"] = [row for name in suite.scales
                                for row in throughput_rows(params, data, suite, name, runtime)]
        micro = {row["scale"]["name"]: row["micro_batch"] for row in report["throughput"]
                 if row["trainer"] == "hf_eager_fp32"}

    def micro_batch(name: str) -> int:
        if name not in micro:
            micro[name] = plain_micro_batch(params, data, suite, name, runtime)
        return micro[name]

    if "concurrency" in parts:
        report["concurrency"] = concurrency_rows(params, data, suite, runtime, micro_batch(suite.concurrency_scale))
    if "profile" in parts:
        report["profile"] = profile_rows(params, data, suite, runtime, micro_batch(suite.profile_scale))
    if "curves" in parts:
        report["loss_curves"] = curve_rows(params, data, suite, runtime, micro_batch(suite.curve_scale))
    out.mkdir(parents=True, exist_ok=True)
    device = re.sub(r"[^a-z0-9]+", "-", runtime.name.lower()).strip("-")
    stem = out / "-".join([suite_name, device, *([] if parts == PARTS else parts)])
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    return report


def markdown(report: dict[str, Any]) -> str:
    """The suite's report as markdown: one table or paragraph per part that ran."""
    lines = [f"# optsweep bench, suite {report['suite']}", "",
             f"{report['device']}, torch {report['torch']}, transformers {report['transformers']}, {report['date']}"]
    if "throughput" in report:
        lines += ["", "| scale | trainer | precision | compile | micro-batch | tokens/s (range) | MFU | peak GB |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in report["throughput"]:
            low, high = row["tokens_per_s_range"]
            mfu = "" if row.get("mfu") is None else f"{100 * row['mfu']:.1f}%"
            lines.append(f"| {row['scale']['name']} | {row['trainer']} | {row['precision']} | {row['compile']} | "
                         f"{row['micro_batch']} | {row['tokens_per_s']:,} ({low:,}-{high:,}) | {mfu} | "
                         f"{row.get('peak_memory_gb', '')} |")
    if "concurrency" in report:
        lines += ["", "| scale | concurrent runs | micro-batch | aggregate tokens/s | per run |",
                  "|---|---|---|---|---|"]
        for row in report["concurrency"]:
            per_run = ", ".join(f"{t:,}" for t in row["tokens_per_s_per_run"])
            lines.append(f"| {row['scale']} | {row['runs']} | {row['micro_batch']} | "
                         f"{row['aggregate_tokens_per_s']:,} | {per_run} |")
    if "profile" in report:
        profile = report["profile"]
        lines += ["", f"Profile of {profile['steps']} steps at {profile['scale']} ({profile['measure']}); attention "
                  f"ran: {', '.join(profile['attention']) or 'no SDPA kernel found'}.", "",
                  "| kernel | ms | share | calls |", "|---|---|---|---|"]
        lines += [f"| `{e['name']}` | {e['ms']} | {100 * e['share']:.1f}% | {e['calls']} |" for e in profile["top"]]
    if "loss_curves" in report:
        curves = report["loss_curves"]
        ends = ", ".join(f"{name} {value}" for name, value in curves["end"].items())
        lines += ["", f"Loss curves at {curves['scale']} over {curves['steps']} steps (end = mean of the last "
                  f"{curves['end_mean_of_last']}): {ends}; relative difference "
                  f"{100 * curves['relative_difference']:.2f}%."]
    return "\n".join(lines) + "\n"
