"""Before any run is dispatched, each worker proves it can compute on its device.

A worker that cannot (no GPU visible to torch, a driver too old for this torch's CUDA build, a compile
toolchain that fails, a GPU already full) would otherwise fail every run it is given, and every one of
those runs would be stored as `failed`. The preflight turns that into one line that stops the sweep
before anything is trained or stored. It also opens the prepared shards the runs will read: a Ray node
that does not mount the data folder, or sees it under another path, fails here, naming the path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

MIN_FREE_BYTES = 1 << 30  # a GPU with less than 1 GiB free is taken by something else
DATA_FILES = ("meta.json", "val.bin", "train.bin")  # what every run of the default trainer opens


class PreflightError(RuntimeError):
    """The device cannot run training; the message is one line naming the cause."""


def _driver_version() -> str | None:
    try:
        listed = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return listed.splitlines()[0].strip() if listed.strip() else None


def _no_cuda_reason(torch: Any) -> str:
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build; install a CUDA build (see README, 'GPU drivers')"
    driver = _driver_version()
    if driver is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        return f"no GPU visible to torch (nvidia-smi finds no driver; CUDA_VISIBLE_DEVICES={visible!r})"
    return (f"torch {torch.__version__} (CUDA {torch.version.cuda}) cannot use the GPU with driver {driver}: "
            "the driver is too old for this CUDA build, or the GPU is not visible; see README, 'GPU drivers'")


def check_device(train_settings: dict[str, Any]) -> str:
    """Compute on the device the train settings name; return its description or raise `PreflightError`."""
    device = train_settings.get("device", "auto")
    no_gpu_here = shutil.which("nvidia-smi") is None and not os.environ.get("CUDA_VISIBLE_DEVICES")
    if device == "cpu" or (device == "auto" and no_gpu_here):
        return "cpu"  # without importing torch: a synthetic trainer's workers start in milliseconds
    import torch

    if not torch.cuda.is_available():
        if device == "cuda":
            raise PreflightError(f"study.train.device is 'cuda' but {_no_cuda_reason(torch)}")
        return "cpu"
    try:
        probe = torch.ones(256, 256, device="cuda")
        (probe @ probe).sum().item()
        if train_settings.get("compile"):
            compiled = torch.compile(lambda x: torch.nn.functional.silu(x) * 2)
            compiled(probe).sum().item()
        free, total = torch.cuda.mem_get_info()
    except Exception as error:  # any failure here is the device's or toolchain's, not a run's
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise PreflightError(f"CUDA preflight failed on {torch.cuda.get_device_name()}: "
                             f"{type(error).__name__}: {first}") from None
    name = torch.cuda.get_device_name()
    if free < MIN_FREE_BYTES:
        raise PreflightError(f"{name}: only {free / 2**30:.2f} GiB of {total / 2**30:.0f} GiB free; "
                             "another process holds the GPU (a sweep still running?)")
    return f"{name} ({free / 2**30:.0f} GiB free, torch {torch.__version__}, CUDA {torch.version.cuda})"


def check_data(folder: str) -> None:
    """Read the first byte of each file the runs open in the prepared data `folder`, or raise `PreflightError`."""
    for name in DATA_FILES:
        path = Path(folder) / name
        try:
            with path.open("rb") as file:
                file.read(1)
        except OSError as error:
            raise PreflightError(f"study.data.dir: cannot read {path} on this worker ({error.strerror or error}); "
                                 "every node must see the prepared data at the same absolute path") from None


def preflight(train_settings: dict[str, Any], data_dir: str | None) -> str:
    """The checks a worker passes before its first run: the prepared data (if its runs read any), then the
    device; returns the device's description."""
    if data_dir is not None:
        check_data(data_dir)
    return check_device(train_settings)
