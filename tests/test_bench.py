"""`optsweep bench`: both loops timed in one process on the same model and data."""

from __future__ import annotations

import json

import pytest
import torch

from optsweep.bench import peak_flops, run_bench
from optsweep.cli import main
from optsweep.config import ParamsError


def test_bench_rows(prepared_params):
    report = run_bench(prepared_params, None, steps=2)
    assert [row["trainer"] for row in report["rows"]] == ["optsweep", "hf_eager_fp32"]
    assert report["scale"]["name"] == "a" and report["scale"]["n_params"] == prepared_params.scale("a").n_params
    assert report["torch"] == torch.__version__ and report["date"] and report["device"]
    for row in report["rows"]:
        assert row["tokens_per_s"] > 0 and row["ms_per_step"] > 0
    assert report["rows"][1]["precision"] == "fp32" and report["rows"][1]["compile"] is False
    assert report["speedup"] > 0


def test_bench_cli_prints_json(prepared_params_file, capsys):
    assert main(["bench", "--params", str(prepared_params_file), "--scale", "b", "--steps", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["scale"]["name"] == "b" and len(report["rows"]) == 2


def test_bench_rejects_bad_arguments(prepared_params):
    with pytest.raises(ParamsError, match="unknown scale 'zz'"):
        run_bench(prepared_params, "zz", steps=2)
    with pytest.raises(ParamsError, match="--steps"):
        run_bench(prepared_params, None, steps=0)


def test_peak_flops_by_device_name():
    assert peak_flops("NVIDIA H100 80GB HBM3") == peak_flops("NVIDIA H200") == 989e12
    assert peak_flops("cpu") is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bench_on_gpu_reports_mfu_and_memory(prepared_params):
    report = run_bench(prepared_params, None, steps=3)
    ours, plain = report["rows"]
    assert ours["precision"] == "bf16" and ours["fused_adamw"] is True
    for row in (ours, plain):
        assert row["peak_memory_gb"] > 0
        assert row["mfu"] is None or 0 < row["mfu"] < 1
