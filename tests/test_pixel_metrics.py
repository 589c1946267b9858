"""Pixel AUROC and AUPRO against hand-computed cases and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cutpaste.pixel_metrics import aupro, pixel_metrics, pro_curve


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
