"""Where bf16 autocast and channels_last pay off: always on CUDA, on a CPU only with native bf16.

On a CPU with AMX or AVX512-BF16, oneDNN runs bf16 convolutions natively: the training loop at 128 px,
batch 96, ran at 163 img/s with bf16 + channels_last against 79 img/s in fp32 on this project's
2-core AVX512-BF16 machine (``bench/train_step.py``, same AUROC from the same seed). Without those
instructions bf16 is emulated and slower than fp32, so it is detected from the CPU, never assumed;
the decision depends only on the machine, so a seed reproduces its run on that machine.
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU has AMX tiles or AVX512-BF16 (torch's own CPU feature probes)."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def use_amp(device: torch.device, requested: bool) -> bool:
    """Whether to train under bf16 autocast on ``device`` when the config asks for ``amp``."""
    if not requested:
        return False
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())


def use_channels_last(device: torch.device, requested: bool) -> bool:
    """channels_last helps where bf16 kernels run (CUDA, native-bf16 CPUs); elsewhere it is neutral at best."""
    return requested and (device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()))
