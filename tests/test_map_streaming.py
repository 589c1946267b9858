"""Evaluation hands maps over in passes and keeps none of them: the passes, the pixel metrics they feed,
and the review figure's choice of four images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cutpaste.data import list_samples
from cutpaste.data.images import load_images, load_masks
from cutpaste.data.layout import Sample
from cutpaste.evaluation import evaluate as evaluate_module
from cutpaste.evaluation.evaluate import MapBatch, evaluate_detector
from cutpaste.evaluation.pixel_metrics import pixel_metrics
from cutpaste.localization.localize import ReviewPicks, sample_heatmaps
from tests.conftest import write_tiny_category


@dataclass
class _Config:
    image_size: int = 16


class _DarkSpots:
    """A stand-in detector: the map is how dark each pixel is, the score its maximum."""

    config = _Config()
    threshold = 0.5
    map_range = (0.0, 1.0)
    is_patch_model = True

    def anomaly_maps(self, images: torch.Tensor, mode: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
        x = F.interpolate(images.float() / 255, size=(16, 16), mode="area").mean(1)
        maps = 1.0 - x
        return maps.flatten(1).amax(1).double(), maps

    def score(self, images: torch.Tensor) -> torch.Tensor:
        return self.anomaly_maps(images)[0]


def test_maps_come_in_passes_and_the_metrics_match_the_exact_ones(tmp_path, monkeypatch):
    write_tiny_category(tmp_path, size=48)
    samples = list_samples(tmp_path, "widget", "test")
    monkeypatch.setattr(evaluate_module, "EVAL_CHUNK", 4)
    seen: list[MapBatch] = []
    evaluation = evaluate_detector(_DarkSpots(), samples, on_maps=seen.append)
    assert [b.indices for b in seen] == [[0, 1, 2, 3], [4, 5]]
    assert all(b.maps.shape[1:] == (16, 16) for b in seen) and seen[0].masks.shape == (4, 16, 16)
    detector = _DarkSpots()
    scores, maps = detector.anomaly_maps(load_images([s.path for s in samples], 16))
    assert evaluation.scores == pytest.approx(scores.tolist())
    upsampled = F.interpolate(maps[:, None], size=(48, 48), mode="bilinear", align_corners=False)[:, 0]
    exact = pixel_metrics(load_masks(samples, 48), upsampled, [s.label for s in samples])
    assert evaluation.pixel.pixel_auroc == pytest.approx(exact.pixel_auroc, abs=1e-3)
    assert evaluation.pixel.aupro == pytest.approx(exact.aupro, abs=1e-3)
    assert set(evaluation.to_dict()) >= {"pixel_auroc", "aupro", "defect_regions", "empty_masks", "samples"}


def _batch(scores: list[float], labels: list[int], start: int) -> MapBatch:
    n = len(scores)
    samples = [Sample(Path(f"{start + i}.png"), "test", y, "good" if y == 0 else "crack") for i, y in enumerate(labels)]
    maps = torch.tensor(scores).view(n, 1, 1).expand(n, 4, 4).clone()
    images = torch.zeros((n, 3, 4, 4), dtype=torch.uint8)
    return MapBatch(samples, list(range(start, start + n)), images, maps, None, scores)


def test_the_review_figure_keeps_the_four_images_a_sort_would_choose():
    scores = [0.3, 0.9, 0.1, 0.9, 0.1, 0.5, 0.2, 0.2, 0.7]
    labels = [1, 1, 1, 1, 1, 0, 0, 0, 0]
    picks = ReviewPicks()
    for start in range(0, len(scores), 2):
        picks(_batch(scores[start : start + 2], labels[start : start + 2], start))
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # the previous, keep-everything selection
    bad, good = [i for i in order if labels[i] == 1], [i for i in order if labels[i] == 0]
    expected = [bad[0], bad[-1], good[0], good[-1]]
    assert [p.name.split("/")[1] for _, p in picks.chosen()] == [str(i) for i in expected]
    assert picks.chosen()[0][0] == "highest-scored defective"
    assert sample_heatmaps(picks, (0.0, 1.0), title="t") is not None


def test_one_image_of_a_kind_is_shown_once_and_no_maps_no_figure():
    picks = ReviewPicks()
    picks(_batch([0.4, 0.6], [1, 0], 0))
    assert [role for role, _ in picks.chosen()] == ["highest-scored defective", "highest-scored good"]
    assert sample_heatmaps(ReviewPicks(), (0.0, 1.0)) is None
