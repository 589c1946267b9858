"""The synthetic MVTec-layout generator: layout, masks, determinism, atomic re-runs, and difficulty.

The difficulty tests pin the property the data exists for: global colour statistics must not separate
good from defective images (lighting varies more than a defect shifts them), while an untrained CNN
feature detector already does better, because the defects are local structure.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score

from cutpaste.data.synth import (
    SYNTH_CATEGORIES,
    SYNTH_DEFECT_TYPES,
    SYNTH_OBJECTS,
    SYNTH_TEXTURES,
    generate_dataset,
    render_sample,
)

PARAMS = {"categories": 4, "size": 64, "seed": 0, "train_count": 40, "test_good": 24, "test_defect_per_type": 6}


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    assert generate_dataset(root, **PARAMS) == list(SYNTH_CATEGORIES[:4])
    return root


def _pngs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.png"))


def _load(folder: Path) -> np.ndarray:
    """(N, H, W, 3) uint8."""
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in _pngs(folder)])


def _test_set(category: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, test, labels) for one category; labels are 1 for defective."""
    tests, labels = [], []
    for folder in sorted((category / "test").iterdir()):
        tests.append(_load(folder))
        labels += [int(folder.name != "good")] * len(tests[-1])
    return _load(category / "train" / "good"), np.concatenate(tests), np.array(labels)


def _mahalanobis(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    gaussian = LedoitWolf().fit(train)
    delta = test - gaussian.location_
    return np.einsum("nd,de,ne->n", delta, gaussian.precision_, delta)


def _pixel_stats(images: np.ndarray) -> np.ndarray:
    x = images.astype(np.float64) / 255
    return np.concatenate([x.mean((1, 2)), x.std((1, 2))], axis=1)


def _untrained_resnet_features(images: np.ndarray) -> np.ndarray:
    """L2-normalised pooled features of a random-init ResNet-18 on ImageNet-normalised input."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    model.fc = torch.nn.Identity()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        return torch.nn.functional.normalize(model.eval()(x), dim=1).numpy()


def test_category_groups():
    assert len(SYNTH_CATEGORIES) >= 4 and len(SYNTH_TEXTURES) >= 2 and len(SYNTH_OBJECTS) >= 2
    assert set(SYNTH_CATEGORIES) == SYNTH_TEXTURES | SYNTH_OBJECTS and not SYNTH_TEXTURES & SYNTH_OBJECTS
    kinds = [name in SYNTH_TEXTURES for name in SYNTH_CATEGORIES]
    assert kinds[:4] == [True, False, True, False]  # alternating, so any first N is a mix


def test_layout_counts_and_masks(synth_root: Path):
    for name in SYNTH_CATEGORIES[:4]:
        category = synth_root / name
        meta = json.loads((category / ".synth.json").read_text())
        assert meta["seed"] == 0 and meta["size"] == 64 and meta["defects"] == list(SYNTH_DEFECT_TYPES[name])
        assert len(meta["defects"]) >= 3
        assert len(_pngs(category / "train" / "good")) == 40 and len(_pngs(category / "test" / "good")) == 24
        assert sorted(p.name for p in (category / "test").iterdir()) == sorted(["good", *meta["defects"]])
        assert sorted(p.name for p in (category / "ground_truth").iterdir()) == sorted(meta["defects"])
        for defect in meta["defects"]:
            images = _pngs(category / "test" / defect)
            assert [p.name for p in images] == [f"{i:03d}.png" for i in range(6)]
            for image_path in images:
                image = Image.open(image_path)
                mask = Image.open(category / "ground_truth" / defect / f"{image_path.stem}_mask.png")
                assert image.mode == "RGB" and mask.mode == "L" and image.size == mask.size == (64, 64)
                values = np.asarray(mask)
                assert set(np.unique(values)) == {0, 255}
                assert 0.005 <= (values > 0).mean() <= 0.06, f"{image_path}: defect not local"
    assert not [p for p in synth_root.iterdir() if p.name.startswith(".")], "temporary directory left behind"


@pytest.mark.parametrize("name", SYNTH_CATEGORIES)
def test_mask_marks_exactly_the_changed_pixels(name: str):
    for i in range(3):
        clean, image, mask = render_sample(name, "good", i, size=64)
        assert (clean == image).all() and not mask.any()
    for defect in SYNTH_DEFECT_TYPES[name]:
        for i in range(3):
            clean, image, mask = render_sample(name, defect, i, size=64)
            changed = (clean != image).any(-1)
            assert not (changed & ~mask).any(), f"{name}/{defect}/{i}: pixels changed outside the mask"
            assert changed[mask].mean() > 0.8, f"{name}/{defect}/{i}: mask larger than the change"


def test_deterministic_and_seeded(tmp_path: Path):
    small = {"categories": ["synth_disc"], "size": 48, "train_count": 2, "test_good": 2, "test_defect_per_type": 1}
    generate_dataset(tmp_path / "a", **small)
    generate_dataset(tmp_path / "b", **small)
    generate_dataset(tmp_path / "c", seed=1, **small)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 2 + 2 + 4 * 2 + 1
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files_a)
    first = Path("synth_disc/train/good/000.png")
    assert (tmp_path / "a" / first).read_bytes() != (tmp_path / "c" / first).read_bytes()


def test_rerun_skips_and_mismatch_raises(synth_root: Path, tmp_path: Path):
    marker = synth_root / SYNTH_CATEGORIES[0] / ".synth.json"
    before = marker.stat().st_mtime_ns
    assert generate_dataset(synth_root, **PARAMS) == list(SYNTH_CATEGORIES[:4])
    assert marker.stat().st_mtime_ns == before
    with pytest.raises(ValueError, match=f"{SYNTH_CATEGORIES[0]}.*other parameters.*seed"):
        generate_dataset(synth_root, **{**PARAMS, "seed": 7})
    (tmp_path / "synth_weave").mkdir()
    with pytest.raises(ValueError, match="not written by the generator"):
        generate_dataset(tmp_path, categories=["synth_weave"], size=48, train_count=1, test_good=1)
    with pytest.raises(ValueError, match="unknown synthetic categories"):
        generate_dataset(tmp_path, categories=["carpet"])
    with pytest.raises(ValueError, match="categories"):
        generate_dataset(tmp_path, categories=0)


def test_pixel_statistics_do_not_separate_defects(synth_root: Path):
    aurocs = []
    for name in SYNTH_CATEGORIES[:4]:
        train, test, labels = _test_set(synth_root / name)
        aurocs.append(roc_auc_score(labels, _mahalanobis(_pixel_stats(train), _pixel_stats(test))))
    assert np.mean(aurocs) <= 0.75, dict(zip(SYNTH_CATEGORIES, aurocs, strict=False))


def test_untrained_resnet_beats_pixel_statistics(synth_root: Path):
    pixel, resnet = [], []
    for name in ("synth_weave", "synth_bolt"):
        train, test, labels = _test_set(synth_root / name)
        pixel.append(roc_auc_score(labels, _mahalanobis(_pixel_stats(train), _pixel_stats(test))))
        features = _untrained_resnet_features(np.concatenate([train, test]))
        resnet.append(roc_auc_score(labels, _mahalanobis(features[: len(train)], features[len(train) :])))
    assert np.mean(resnet) > np.mean(pixel) + 0.1, (pixel, resnet)
