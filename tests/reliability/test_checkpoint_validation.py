"""A partial or foreign checkpoint is never resumed from: ``last.pt`` cut at any point is refused by name, a
stale temporary file beside a good checkpoint is ignored. (All-zero bytes and another config's checkpoint are
covered in tests/test_train.py.)"""

from __future__ import annotations

import pytest
import torch

from cutpaste.data import list_samples, load_images
from cutpaste.errors import ModelBundleError
from cutpaste.presets import preset
from cutpaste.train.checkpoint import CHECKPOINT_NAME
from cutpaste.train.loop import TrainHooks, train_model
from cutpaste.workflow import CHECKPOINT_DIR

CONFIG = preset("ci").override(
    {"image_size": 32, "steps": 4, "batch_size": 2, "checkpoint_every": 2, "log_every": 2, "head_width": 32}
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from tests.conftest import write_tiny_category

    root = tmp_path_factory.mktemp("ckpt")
    write_tiny_category(root / "data")
    images = load_images([s.path for s in list_samples(root / "data", "widget", "train")], 32)

    def stop_at_2(step, path):
        if step == 2:
            raise KeyboardInterrupt  # a run killed right after its first checkpoint

    with pytest.raises(KeyboardInterrupt):
        hooks = TrainHooks(on_checkpoint=stop_at_2)
        train_model(CONFIG, images, device="cpu", checkpoint_dir=root / "run", hooks=hooks, progress=False)
    return images, (root / "run" / CHECKPOINT_NAME).read_bytes()


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.9, 0.999, -1])
def test_a_truncated_checkpoint_is_refused_by_name(trained, tmp_path, keep):
    images, good = trained
    cut = len(good) - 1 if keep == -1 else int(len(good) * keep)
    (tmp_path / CHECKPOINT_NAME).write_bytes(good[:cut])
    with pytest.raises(ModelBundleError, match=rf"checkpoint {tmp_path / CHECKPOINT_NAME} is unreadable"):
        train_model(CONFIG, images, device="cpu", checkpoint_dir=tmp_path, progress=False)


def test_a_foreign_pickle_is_refused(trained, tmp_path):
    images, _ = trained
    torch.save({"step": 2, "model": {}}, tmp_path / CHECKPOINT_NAME)  # loads, but is no checkpoint of ours
    with pytest.raises(ModelBundleError, match="has format None"):
        train_model(CONFIG, images, device="cpu", checkpoint_dir=tmp_path, progress=False)


def test_a_left_over_temporary_file_is_ignored(trained, tmp_path):
    """A process killed inside atomic_torch_save leaves ``.last.pt.tmp-<pid>``: resume uses the complete file."""
    images, good = trained
    (tmp_path / CHECKPOINT_NAME).write_bytes(good)
    (tmp_path / f".{CHECKPOINT_NAME}.tmp-99999").write_bytes(good[: len(good) // 2])
    resumed = train_model(CONFIG, images, device="cpu", checkpoint_dir=tmp_path, progress=False)
    assert resumed.resumed_from_step == 2 and resumed.steps_done == 4


def test_ray_restore_skips_a_registered_checkpoint_without_a_usable_file(trained, tmp_path):
    """Ray registers a checkpoint even when uploading its file failed (seen in test_storage_outage.py): the
    adapter resumes only from a complete ``last.pt`` and otherwise starts over (same model: runs are seeded)."""
    from pipelines.train_run import restore_library_checkpoint

    _, good = trained
    restored = tmp_path / "work" / CHECKPOINT_DIR / CHECKPOINT_NAME
    empty = tmp_path / "empty"
    empty.mkdir()
    assert restore_library_checkpoint(empty, tmp_path / "work") is None and not restored.exists()
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / CHECKPOINT_NAME).write_bytes(good[: len(good) // 2])
    assert restore_library_checkpoint(cut, tmp_path / "work") is None and not restored.exists()
    whole = tmp_path / "whole"
    whole.mkdir()
    (whole / CHECKPOINT_NAME).write_bytes(good)
    assert restore_library_checkpoint(whole, tmp_path / "work") == 2 and restored.read_bytes() == good
