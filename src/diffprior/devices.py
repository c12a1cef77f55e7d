"""Devices: which one to run on (one policy for every command), waiting for it, and naming it in reports."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def pick_device(name: str | torch.device | None = "auto", local_rank: int | None = None) -> torch.device:
    """'auto' (or None): CUDA when available, else the CPU, the only fallback; any other name must be a
    device of this machine (a ValueError says what there is). Under torchrun (`local_rank` given), 'auto'
    and 'cuda' mean this process's own GPU, cuda:local_rank."""
    if name in (None, "auto"):
        if not torch.cuda.is_available():
            return torch.device("cpu")
        name = "cuda"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ValueError(f"device {name!r}: CUDA is not available on this machine; use --device cpu")
        if device.index is None and local_rank is not None:
            device = torch.device("cuda", local_rank)
        if device.index is not None and device.index >= n:
            raise ValueError(f"device {name!r}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r}: MPS is not available on this machine; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {name!r}: use auto, cpu, cuda or cuda:N")
    return device


def sync(device: torch.device) -> None:
    """Wait until the device has finished its queued work (for timing); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe_device(device: torch.device) -> str:
    """The device in words, for reports: the GPU's name, or the CPU's model with its cores and torch threads."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name} ({cores} cores, {torch.get_num_threads()} torch threads)"
