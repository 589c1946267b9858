"""Pixel AUROC and AUPRO against hand-computed cases and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cutpaste.evaluation.pixel_metrics import aupro, pixel_metrics, pro_curve


def test_a_perfect_map_scores_one():
    masks = np.array([[[1, 1, 0, 0]]], bool)
    maps = np.array([[[4.0, 3.0, 2.0, 1.0]]])
    assert aupro(masks, maps) == pytest.approx(1.0)
    assert pixel_metrics(masks, maps, [1]).pixel_auroc == pytest.approx(1.0)


def test_half_a_region_found_before_any_false_positive():
    # Ranked: defect (4), normal (3), normal (2), defect (1). PRO reaches 0.5 at FPR 0 and stays there
    # until FPR 1, so the area up to FPR 0.3 is 0.5 * 0.3, normalised: 0.5.
    masks = np.array([[[1, 1, 0, 0]]], bool)
    maps = np.array([[[4.0, 1.0, 3.0, 2.0]]])
    fpr, pro = pro_curve(masks, maps)
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(pro, [0, 0.5, 0.5, 0.5, 1])
    assert aupro(masks, maps) == pytest.approx(0.5)


def test_regions_weigh_equally_whatever_their_size():
    # Image 0: a 1-pixel region (found first); image 1: a 3-pixel region (never above a normal pixel).
    masks = np.array([[[1, 0, 0, 0]], [[1, 1, 1, 0]]], bool)
    maps = np.array([[[9.0, 5.0, 5.0, 5.0]], [[1.0, 1.0, 1.0, 5.0]]])
    fpr, pro = pro_curve(masks, maps)
    # After the 9: PRO = 1/2 (one of two regions fully covered) at FPR 0; then all normal pixels tie at 5.
    assert (fpr[1], pro[1]) == (0.0, 0.5)
    assert (fpr[2], pro[2]) == (1.0, 0.5)
    assert aupro(masks, maps) == pytest.approx(0.5)


def test_ties_move_together():
    masks = np.array([[[1, 0, 0, 0]]], bool)
    maps = np.zeros((1, 1, 4))
    fpr, pro = pro_curve(masks, maps)
    np.testing.assert_allclose(fpr, [0, 1])
    np.testing.assert_allclose(pro, [0, 1])
    # The straight line from (0, 0) to (1, 1) up to FPR 0.3: 0.3^2 / 2, normalised by 0.3.
    assert aupro(masks, maps) == pytest.approx(0.15)
    assert pixel_metrics(masks, maps, [1]).pixel_auroc == pytest.approx(0.5)


def test_pixel_auroc_agrees_with_sklearn_on_random_maps():
    rng = np.random.default_rng(0)
    masks = np.zeros((6, 32, 32), bool)
    masks[::2, 8:16, 10:20] = True
    masks[1, 20:24, 2:5] = True
    maps = rng.random(masks.shape).astype(np.float32) + 0.3 * masks
    maps[3, :4] = 0.5  # ties
    result = pixel_metrics(masks, maps, [1, 1, 1, 0, 1, 0])
    assert result.pixel_auroc == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-9)
    assert result.num_regions == 4
    assert 0 < result.aupro < 1


def test_empty_masks_are_counted_and_missing_masks_skip_pixel_metrics():
    masks = np.zeros((3, 4, 4), bool)
    masks[0, 1:3, 1:3] = True
    maps = np.random.default_rng(1).random((3, 4, 4))
    result = pixel_metrics(masks, maps, [1, 1, 0])
    assert result.empty_masks == 1 and "all-zero" in result.note
    none = pixel_metrics(np.zeros((2, 4, 4), bool), maps[:2], [1, 0])
    assert none.pixel_auroc is None and none.aupro is None and "skipped" in none.note


def test_bad_shapes_and_values_are_errors():
    with pytest.raises(ValueError, match="must both be"):
        pixel_metrics(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 5)), [0, 1])
    with pytest.raises(ValueError, match="not finite"):
        maps = np.zeros((1, 2, 2))
        maps[0, 0, 0] = np.nan
        pixel_metrics(np.eye(2, dtype=bool)[None], maps, [1])


def reference_aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    """The MVTec AD procedure written the plain way, independently of cutpaste.evaluation.pixel_metrics: label each
    image's defect regions with a 3x3 structure (8-connectivity), sweep a threshold down through every
    distinct score, at each one take the FPR over normal pixels and the mean overlap of all regions,
    integrate PRO over FPR (trapezoids) up to ``fpr_limit`` with the curve interpolated there, normalise."""
    from scipy.ndimage import label

    regions = []
    for image in range(masks.shape[0]):
        labelled, count = label(masks[image], structure=np.ones((3, 3), dtype=int))
        regions += [(image, labelled == k) for k in range(1, count + 1)]
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for threshold in np.unique(maps)[::-1]:
        predicted = maps >= threshold
        fprs.append((predicted & normal).sum() / normal.sum())
        pros.append(np.mean([predicted[image][region].mean() for image, region in regions]))
    fprs, pros = np.asarray(fprs), np.asarray(pros)
    inside = fprs <= fpr_limit
    x, y = list(fprs[inside]), list(pros[inside])
    if x[-1] < fpr_limit:
        after = int(np.argmax(fprs > fpr_limit))
        f0, f1, p0, p1 = fprs[after - 1], fprs[after], pros[after - 1], pros[after]
        x.append(fpr_limit)
        y.append(p0 + (p1 - p0) * (fpr_limit - f0) / (f1 - f0))
    area = sum((x[i + 1] - x[i]) * (y[i + 1] + y[i]) / 2 for i in range(len(x) - 1))
    return area / fpr_limit


@pytest.mark.parametrize("seed", range(4))
def test_aupro_matches_a_straightforward_mvtec_implementation(seed):
    rng = np.random.default_rng(seed)
    masks = np.zeros((4, 20, 20), bool)
    for image in range(3):  # blobs of random sizes, some touching only diagonally
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, 16, 2)
            masks[image, y : y + rng.integers(1, 5), x : x + rng.integers(1, 5)] = True
    masks[0, 18, 18] = masks[0, 19, 19] = True  # one region under 8-connectivity, two under 4
    maps = rng.random(masks.shape) + 0.4 * masks * rng.random(masks.shape)
    maps = np.round(maps, 2)  # ties, as real maps have
    assert aupro(masks, maps) == pytest.approx(reference_aupro(masks, maps), abs=1e-3)


def test_diagonal_neighbours_form_one_region():
    masks = np.zeros((1, 4, 4), bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True
    result = pixel_metrics(masks, np.random.default_rng(0).random((1, 4, 4)), [1])
    assert result.num_regions == 1


def test_maps_are_compared_with_masks_at_the_masks_resolution(tmp_path):
    import torch
    import torch.nn.functional as F

    from cutpaste.data import list_samples
    from cutpaste.data.images import load_masks
    from cutpaste.evaluation.evaluate import pixel_metrics_at_mask_resolution
    from tests.conftest import write_tiny_category

    write_tiny_category(tmp_path, size=48)
    samples = list_samples(tmp_path, "widget", "test")
    maps = torch.rand(len(samples), 16, 16, generator=torch.Generator().manual_seed(0))
    result = pixel_metrics_at_mask_resolution(samples, maps)
    native = load_masks(samples, 48)
    upsampled = F.interpolate(maps[:, None], size=(48, 48), mode="bilinear", align_corners=False)[:, 0]
    expected = pixel_metrics(native, upsampled, [s.label for s in samples])
    # Streamed image by image (cutpaste.evaluation.pixel_stream): the exact whole-split result within 1e-3.
    assert result.pixel_auroc == pytest.approx(expected.pixel_auroc, abs=1e-3)
    assert result.aupro == pytest.approx(expected.aupro, abs=1e-3)
    shrunk = pixel_metrics(load_masks(samples, 16), maps, [s.label for s in samples])
    assert shrunk.pixel_auroc != pytest.approx(result.pixel_auroc), "the resolution changes the number"
