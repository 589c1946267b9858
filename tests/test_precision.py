"""bf16 autocast and channels_last on the CPU: applied only where the CPU has native bf16 (detected),
and a bf16 run is as reproducible and resumable as an fp32 one."""

from __future__ import annotations

import pytest
import torch

from cutpaste import precision
from cutpaste.config import preset
from cutpaste.train import TrainHooks, train_model

CONFIG = preset("demo").override({"steps": 6, "batch_size": 4, "checkpoint_every": 3, "log_every": 3})


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


@pytest.mark.skipif(not precision.cpu_has_native_bf16(), reason="this CPU has no native bf16")
def test_a_bf16_run_is_seeded_and_resumes_exactly(tmp_path):
    images = torch.randint(0, 256, (12, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    reference = train_model(CONFIG, images, device="cpu", checkpoint_dir=tmp_path / "a", progress=False)
    again = train_model(CONFIG, images, device="cpu", progress=False)
    assert [r["loss"] for r in again.history] == [r["loss"] for r in reference.history]

    def stop_at_3(step, path):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_model(
            CONFIG, images, device="cpu", checkpoint_dir=tmp_path / "b", hooks=TrainHooks(on_checkpoint=stop_at_3)
        )
    resumed = train_model(CONFIG, images, device="cpu", checkpoint_dir=tmp_path / "b", progress=False)
    assert resumed.resumed_from_step == 3
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in reference.history]
    for key, value in reference.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    # The returned model is in the default memory layout, like one loaded from a bundle.
    conv = reference.model.encoder.conv1.weight
    assert conv.is_contiguous() and all(r["loss"] == r["loss"] for r in reference.history), "no NaN loss"
