"""bf16 autocast and channels_last on the CPU: applied only where the CPU has native bf16 (detected).
That a bf16 run is seeded and resumes exactly is tested beside the fp32 case in tests/test_train.py."""

from __future__ import annotations

import torch

from cutpaste.model import precision as precision


def test_cpu_amp_follows_the_detected_instructions(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert precision.use_amp(cuda, True) and not precision.use_amp(cuda, False)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert not precision.use_amp(cpu, True) and not precision.use_channels_last(cpu, True)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.use_amp(cpu, True) and precision.use_channels_last(cpu, True)
    assert not precision.use_amp(cpu, False) and not precision.use_channels_last(cpu, False)


def test_detection_asks_torch_about_the_cpu():
    expected = any(
        getattr(torch.cpu, name, lambda: False)() for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    )
    assert precision.cpu_has_native_bf16() == expected
