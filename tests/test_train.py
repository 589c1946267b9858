import pytest
import torch

from cutpaste.data import list_samples, load_images
from cutpaste.errors import ConfigError, ModelBundleError
from cutpaste.model.precision import cpu_has_native_bf16
from cutpaste.presets import preset
from cutpaste.train.checkpoint import CHECKPOINT_NAME
from cutpaste.train.loop import TrainHooks, train_model

CONFIG = preset("ci").override(
    {"image_size": 32, "steps": 6, "batch_size": 4, "checkpoint_every": 3, "log_every": 3, "head_width": 64}
)


@pytest.fixture
def images(tiny_root):
    return load_images([s.path for s in list_samples(tiny_root, "widget", "train")], 32)


def _state(result):
    return {k: v.clone() for k, v in result.model.state_dict().items()}


BF16 = pytest.param(
    True,
    id="bf16",
    marks=pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16"),
)


@pytest.mark.parametrize("amp", [pytest.param(False, id="fp32"), BF16])
def test_interrupted_run_resumes_and_ends_where_an_uninterrupted_run_ends(images, tmp_path, amp):
    """In fp32 (the ci preset) and with bf16 autocast + channels_last where the CPU has native bf16."""
    config = CONFIG.override({"amp": amp, "channels_last": amp})
    reference = train_model(config, images, device="cpu", checkpoint_dir=tmp_path / "a", progress=False)
    again = train_model(config, images, device="cpu", progress=False)
    assert [r["loss"] for r in again.history] == [r["loss"] for r in reference.history], "seeded"
    assert all(r["loss"] == r["loss"] for r in reference.history), "no NaN loss"
    # The returned model is in the default memory layout, like one loaded from a bundle.
    assert reference.model.encoder.conv1.weight.is_contiguous()

    def stop_at_3(step, path):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_model(
            config, images, device="cpu", checkpoint_dir=tmp_path / "b", hooks=TrainHooks(on_checkpoint=stop_at_3)
        )
    assert (tmp_path / "b" / CHECKPOINT_NAME).exists()
    resumed = train_model(config, images, device="cpu", checkpoint_dir=tmp_path / "b", progress=False)
    assert resumed.resumed_from_step == 3
    for key, value in _state(reference).items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in reference.history]
    assert [r["step"] for r in reference.history] == [3.0, 6.0]
    assert not list((tmp_path / "b").glob(".*tmp*")), "no temporary files left behind"


def test_seed_changes_the_result(images):
    a = train_model(CONFIG.override({"steps": 2}), images, device="cpu", progress=False)
    b = train_model(CONFIG.override({"steps": 2, "seed": 1}), images, device="cpu", progress=False)
    assert not torch.equal(a.model.classifier.weight, b.model.classifier.weight)


def test_resume_refuses_another_config_and_a_corrupt_checkpoint(images, tmp_path):
    train_model(CONFIG.override({"steps": 3}), images, device="cpu", checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ConfigError, match=r"another config \(steps: 3 -> 6"):
        train_model(CONFIG, images, device="cpu", checkpoint_dir=tmp_path, progress=False)
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"\x00" * 100)
    with pytest.raises(ModelBundleError, match=f"checkpoint .*{CHECKPOINT_NAME} is unreadable"):
        train_model(CONFIG, images, device="cpu", checkpoint_dir=tmp_path, progress=False)
    # Starting over ignores the broken file.
    train_model(CONFIG, images, device="cpu", checkpoint_dir=tmp_path, resume=False, progress=False)


def test_hooks_see_progress_records(images):
    records = []
    train_model(CONFIG, images, device="cpu", hooks=TrainHooks(on_log=records.append), progress=False)
    assert [r["step"] for r in records] == [3.0, 6.0]
    assert set(records[0]) == {"step", "loss", "accuracy", "lr", "img_s"}
    assert records[-1]["lr"] < CONFIG.learning_rate


def test_rejects_wrong_image_shapes(images):
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\)"):
        train_model(CONFIG, images[:, :, :16, :16], device="cpu", progress=False)
