"""Streaming pixel metrics: equal to the exact, whole-split computation within 1e-3, in fixed memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cutpaste.evaluation.pixel_metrics import pixel_metrics
from cutpaste.evaluation.pixel_stream import StreamingPixelMetrics, score_edges
from tests.test_pixel_metrics import reference_aupro


def _case(seed: int, n: int, size: int, side: int, *, outlier: bool = False, rounded: bool = False):
    """``n`` maps ``(size, size)`` and masks ``(side, side)``: every third image good, some defective ones
    with an all-zero mask, blobs of random sizes whose maps run hotter, smoothed like real maps."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, side, side), bool)
    labels = []
    for i in range(n):
        labels.append(0 if i % 3 == 0 else 1)
        if labels[-1] == 0 or i % 5 == 4:  # good, or defective with an all-zero mask
            continue
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, side - side // 5, 2)
            masks[i, y : y + rng.integers(1, side // 5), x : x + rng.integers(1, side // 5)] = True
    hot = F.interpolate(torch.from_numpy(masks).float()[:, None], size=(size, size), mode="area")[:, 0]
    noise = F.avg_pool2d(torch.from_numpy(rng.random((n, 1, size, size))).float(), 3, 1, 1)[:, 0]
    maps = noise + 0.6 * hot * torch.from_numpy(rng.random((n, size, size))).float()
    if outlier:
        maps[0, 0, 0] = 1e4  # a heavy tail: almost every value in the bottom 1e-4 of the range
    if rounded:
        maps = torch.round(maps * 20) / 20  # few distinct values, many ties
    return maps, masks, labels


def _streamed(maps: torch.Tensor, masks: np.ndarray, labels: list[int]):
    accumulator = StreamingPixelMetrics(score_edges(maps))
    for scores, mask, label in zip(maps, masks, labels, strict=True):
        accumulator.add(scores, mask, label)
    return accumulator.result()


def _exact(maps: torch.Tensor, masks: np.ndarray, labels: list[int]):
    side = masks.shape[-1]
    upsampled = F.interpolate(maps[:, None], size=(side, side), mode="bilinear", align_corners=False)[:, 0]
    return pixel_metrics(masks, upsampled, labels)


@pytest.mark.parametrize(
    ("seed", "n", "size", "side", "kind"),
    [
        (0, 6, 16, 48, "plain"),
        (1, 9, 32, 32, "plain"),  # masks at the maps' resolution
        (2, 7, 24, 100, "plain"),  # not a multiple
        (3, 12, 32, 128, "outlier"),
        (4, 8, 16, 64, "rounded"),
        (5, 4, 64, 40, "plain"),  # masks smaller than the maps
    ],
)
def test_streaming_equals_the_exact_computation(seed, n, size, side, kind):
    maps, masks, labels = _case(seed, n, size, side, outlier=kind == "outlier", rounded=kind == "rounded")
    exact, streamed = _exact(maps, masks, labels), _streamed(maps, masks, labels)
    assert streamed.pixel_auroc == pytest.approx(exact.pixel_auroc, abs=1e-3)
    assert streamed.aupro == pytest.approx(exact.aupro, abs=1e-3)
    assert (streamed.num_regions, streamed.empty_masks, streamed.note) == (
        exact.num_regions,
        exact.empty_masks,
        exact.note,
    )


def test_streaming_equals_the_plain_threshold_sweep():
    maps, masks, labels = _case(7, 4, 10, 20, rounded=True)
    upsampled = F.interpolate(maps[:, None], size=(20, 20), mode="bilinear", align_corners=False)[:, 0]
    expected = reference_aupro(masks, upsampled.numpy())
    assert _streamed(maps, masks, labels).aupro == pytest.approx(expected, abs=1e-3)


def test_no_defect_pixel_or_no_normal_pixel_skips_as_the_exact_one_does():
    maps = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    for masks, labels in ((np.zeros((3, 16, 16), bool), [0, 1, 1]), (np.ones((3, 16, 16), bool), [1, 1, 1])):
        streamed, exact = _streamed(maps, masks, labels), _exact(maps, masks, labels)
        assert streamed.pixel_auroc is None and streamed.aupro is None
        assert (streamed.note, streamed.empty_masks) == (exact.note, exact.empty_masks)


def test_constant_maps_give_the_diagonal():
    masks = np.zeros((2, 8, 8), bool)
    masks[0, 2:4, 2:4] = True
    result = _streamed(torch.full((2, 4, 4), 3.0), masks, [1, 0])
    assert result.pixel_auroc == pytest.approx(0.5) and result.aupro == pytest.approx(0.15)


def _held_bytes(accumulator: StreamingPixelMetrics) -> int:
    """Every tensor or array the accumulator keeps between images, whatever its attribute's name."""
    held = [v for v in vars(accumulator).values() if isinstance(v, torch.Tensor | np.ndarray)]
    return sum(v.nbytes for v in held)


def test_the_accumulator_does_not_hold_the_pixels():
    maps, masks, labels = _case(8, 40, 16, 64)
    accumulator = StreamingPixelMetrics(score_edges(maps))
    sizes = []
    for scores, mask, label in zip(maps, masks, labels, strict=True):
        accumulator.add(scores, mask, label)
        sizes.append(_held_bytes(accumulator))
    assert len(set(sizes)) == 1, "the state does not grow with the number of images"
    assert sizes[0] == accumulator.state_nbytes
    # Fixed by the bins (at most 2^15 edges, three float64 histograms), not by the 40 x 64 x 64 pixels.
    assert accumulator.state_nbytes <= (1 << 15) * (4 + 3 * 8)


def test_non_finite_maps_and_bad_shapes_are_errors():
    maps = torch.zeros(1, 2, 2)
    maps[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        score_edges(maps)
    accumulator = StreamingPixelMetrics(score_edges(torch.zeros(1, 2, 2)))
    with pytest.raises(ValueError, match="one map"):
        accumulator.add(torch.zeros(1, 2, 2), np.zeros((4, 4), bool), 0)
