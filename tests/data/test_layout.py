import shutil
import warnings

import pytest

from cutpaste.data import MissingMaskWarning, category_kind, discover_categories, list_samples
from cutpaste.errors import DataError
from tests.conftest import write_tiny_category


def test_discovers_categories_and_lists_samples(tmp_path):
    write_tiny_category(tmp_path, "b_widget")
    write_tiny_category(tmp_path, "a_widget")
    (tmp_path / "not_a_category").mkdir()
    assert discover_categories(tmp_path) == ["a_widget", "b_widget"]
    train = list_samples(tmp_path, "a_widget", "train")
    assert len(train) == 6 and all(s.label == 0 and s.split == "train" for s in train)
    test = list_samples(tmp_path, "a_widget", "test")
    defective = [s for s in test if s.label == 1]
    assert len(test) == 6 and len(defective) == 3
    assert all(s.defect_type == "crack" and s.mask_path.name == f"{s.name}_mask.png" for s in defective)
    assert all(s.mask_path is None for s in test if s.label == 0)


def test_grouping():
    assert category_kind("carpet") == "texture" and category_kind("bottle") == "object"
    assert category_kind("my_own_part") == "object"
    assert category_kind("synth_weave") == "texture" and category_kind("synth_disc") == "object"


def test_missing_dir_category_and_empty_train(tmp_path):
    with pytest.raises(DataError, match="data directory not found"):
        discover_categories(tmp_path / "nope")
    with pytest.raises(DataError, match="no category under"):
        discover_categories(tmp_path)
    write_tiny_category(tmp_path, "widget")
    with pytest.raises(DataError, match=r"category 'gadget' not found.*widget"):
        list_samples(tmp_path, "gadget", "train")
    for p in (tmp_path / "widget" / "train" / "good").iterdir():
        p.unlink()
    with pytest.raises(DataError, match=r"no training images in .*train/good"):
        list_samples(tmp_path, "widget", "train")


def test_missing_mask_is_a_warning_naming_the_image(tmp_path):
    base = write_tiny_category(tmp_path, "widget")
    (base / "ground_truth" / "crack" / "001_mask.png").unlink()
    with pytest.warns(MissingMaskWarning, match="crack/001.png"):
        samples = list_samples(tmp_path, "widget", "test")
    assert sum(s.mask_path is None for s in samples if s.label == 1) == 1


def test_many_missing_masks_are_one_warning_that_counts_them(tmp_path):
    """A dataset with image labels only (ELPV) lacks every mask: one line per listing, not one per image."""
    base = write_tiny_category(tmp_path, "widget")
    for mask in (base / "ground_truth").rglob("*_mask.png"):
        mask.unlink()
    crack = base / "test" / "crack"
    for i in range(3, 6):
        shutil.copy(crack / "000.png", crack / f"{i:03d}.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples = list_samples(tmp_path, "widget", "test")
    missing = [w for w in caught if issubclass(w.category, MissingMaskWarning)]
    defective = [s for s in samples if s.label == 1]
    assert len(missing) == 1 and all(s.mask_path is None for s in defective)
    message = str(missing[0].message)
    assert f"no mask for {len(defective)} defective images" in message
    assert str(defective[0].path) in message, "the first unmasked image is named"
    assert message.endswith("and 3 more") and str(defective[3].path) not in message
