"""Opt-in system metrics of a run's training process (``--system-metrics``): CPU, memory, GPU.

Sampled by the worker at every logged step and sent with the step's record, so the driver stays the only
writer to MLflow. Standard library and torch only (no psutil on the nodes).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class SystemSampler:
    """CPU use of this process since the last sample (100 = one core busy), its resident memory, the load
    average, and on CUDA the memory allocated and reserved and the utilisation (when NVML answers)."""

    def __init__(self) -> None:
        self._cpu = self._cpu_seconds()
        self._wall = time.monotonic()

    @staticmethod
    def _cpu_seconds() -> float:
        times = os.times()
        return times.user + times.system

    def sample(self) -> dict[str, float]:
        cpu, wall = self._cpu_seconds(), time.monotonic()
        out = {"system/cpu_percent": 100.0 * (cpu - self._cpu) / max(wall - self._wall, 1e-6)}
        self._cpu, self._wall = cpu, wall
        statm = Path("/proc/self/statm")
        if statm.is_file():
            out["system/memory_rss_mb"] = int(statm.read_text().split()[1]) * _PAGE / 2**20
        if hasattr(os, "getloadavg"):
            out["system/load_1m"] = os.getloadavg()[0]
        if torch.cuda.is_available():
            out["system/gpu_memory_allocated_mb"] = torch.cuda.memory_allocated() / 2**20
            out["system/gpu_memory_reserved_mb"] = torch.cuda.memory_reserved() / 2**20
            # NVML (pynvml) missing or not answering: memory is still worth logging.
            with contextlib.suppress(Exception):
                out["system/gpu_utilization_percent"] = float(torch.cuda.utilization())
        return out
