"""`optsweep bench`: both loops timed in one process on the same model and data; the suite at toy sizes."""

from __future__ import annotations

import json

import pytest
import torch

from optsweep.cli import main
from optsweep.params.settings import ParamsError
from optsweep.train.bench import peak_flops, run_bench
from optsweep.train.bench_suite import attention_kernels, run_suite


def test_bench_rows(prepared_params):
    report = run_bench(prepared_params, None, steps=2, rounds=2)
    assert [row["trainer"] for row in report["rows"]] == ["optsweep", "hf_eager_fp32"]
    assert report["scale"]["name"] == "a" and report["scale"]["n_params"] == prepared_params.scale("a").n_params
    assert report["torch"] == torch.__version__ and report["date"] and report["device"]
    for row in report["rows"]:
        low, high = row["tokens_per_s_range"]
        assert 0 < low <= row["tokens_per_s"] <= high and row["ms_per_step"] > 0 and row["page_faults_per_step"] >= 0
    assert report["rows"][1]["precision"] == "fp32" and report["rows"][1]["compile"] is False
    assert report["speedup"] > 0


def test_bench_cli_prints_json(prepared_params_file, capsys):
    assert main(["bench", "--params", str(prepared_params_file), "--scale", "b", "--steps", "1", "--rounds", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["scale"]["name"] == "b" and len(report["rows"]) == 2


def test_bench_rejects_bad_arguments(prepared_params, tmp_path):
    with pytest.raises(ParamsError, match="unknown scale 'zz'"):
        run_bench(prepared_params, "zz", steps=2)
    with pytest.raises(ParamsError, match="--steps"):
        run_bench(prepared_params, None, steps=0)
    with pytest.raises(ParamsError, match="--parts"):
        run_suite(prepared_params, "quick", tmp_path, parts=("throughput", "speed"))


def test_suite_cli_rejects_an_unknown_part_in_one_line(prepared_params_file, tmp_path, capsys):
    assert main(["bench", "--params", str(prepared_params_file), "--suite", "quick", "--out", str(tmp_path),
                 "--parts", "profile,flops"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("optsweep: error: --parts") and "\n" not in error and not list(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_gpu_suite_is_refused_without_cuda(prepared_params_file, tmp_path, capsys):
    assert main(["bench", "--params", str(prepared_params_file), "--suite", "gpu", "--out", str(tmp_path)]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_peak_flops_by_device_name():
    assert peak_flops("NVIDIA H100 80GB HBM3") == peak_flops("NVIDIA H200") == 989e12  # SXM
    assert peak_flops("NVIDIA H100 PCIe") == 756e12 and peak_flops("NVIDIA H100 NVL") == 835e12
    assert peak_flops("cpu") is None and peak_flops("NVIDIA GeForce RTX 4090") is None


def test_attention_kernel_names():
    assert attention_kernels(["void pytorch_flash::flash_fwd_kernel<...>", "ampere_sgemm"]) == ["flash"]
    assert attention_kernels(["fmha_cutlassF_bf16_aligned_64x64_rf_sm80", "aten::_efficient_attention_forward"]) \
        == ["memory-efficient"]
    assert attention_kernels(["aten::_scaled_dot_product_attention_math", "aten::bmm"]) == ["math (unfused)"]
    assert attention_kernels(["aten::mm"]) == []


def test_quick_suite_writes_json_and_markdown(prepared_params_file, tmp_path, capsys):
    """The GPU suite's code at toy sizes on whatever device this is (the CPU here)."""
    assert main(["bench", "--params", str(prepared_params_file), "--suite", "quick", "--out", str(tmp_path),
                 "--parts", "throughput,profile,curves"]) == 0
    printed = capsys.readouterr().out
    [written] = tmp_path.glob("quick-*-throughput-profile-curves.json")
    report = json.loads(written.read_text())
    assert report["suite"] == "quick" and report["torch"] == torch.__version__ and report["date"]
    assert "concurrency" not in report
    rows = report["throughput"]
    assert [(row["scale"]["name"], row["trainer"]) for row in rows] == [
        ("tiny-a", "optsweep"), ("tiny-a", "hf_eager_fp32"), ("tiny-b", "optsweep"), ("tiny-b", "hf_eager_fp32")]
    assert all(row["tokens_per_s"] > 0 and row["micro_batch"] >= 1 for row in rows)
    profile = report["profile"]
    assert profile["top"] and profile["attention"] == ["flash"]  # torch's CPU flash kernel
    curves = report["loss_curves"]
    assert set(curves["curves"]) == {"bf16_eager", "fp32_eager"} and curves["relative_difference"] >= 0
    assert all(len(losses) == curves["steps"] for losses in curves["curves"].values())
    markdown = written.with_suffix(".md").read_text()
    assert markdown == printed.rstrip("\n") + "\n" and "| tiny-b | hf_eager_fp32 |" in markdown


def test_quick_suite_concurrent_runs(prepared_params, tmp_path):
    """1 and 2 runs of our trainer at once, each in its own process."""
    report = run_suite(prepared_params, "quick", tmp_path, parts=("concurrency",))
    rows = report["concurrency"]
    assert [row["runs"] for row in rows] == [1, 2]
    for row in rows:
        assert len(row["tokens_per_s_per_run"]) == row["runs"]
        assert row["aggregate_tokens_per_s"] == pytest.approx(sum(row["tokens_per_s_per_run"]), abs=row["runs"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bench_on_gpu_reports_mfu_and_memory(prepared_params):
    report = run_bench(prepared_params, None, steps=3)
    ours, plain = report["rows"]
    assert ours["precision"] == "bf16" and ours["fused_adamw"] is True
    for row in (ours, plain):
        assert row["peak_memory_gb"] > 0
        assert row["mfu"] is None or 0 < row["mfu"] < 1
