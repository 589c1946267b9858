"""Score a category's test split with a detector and compute image-level metrics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from cutpaste.data.images import load_images
from cutpaste.data.layout import Sample
from cutpaste.detector import Detector
from cutpaste.metrics import ImageMetrics, image_metrics


@dataclass
class Evaluation:
    metrics: ImageMetrics
    scores: list[float]
    labels: list[int]
    defect_types: list[str]
    paths: list[str]
    threshold: float
    missing_masks: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The JSON shape of ``cutpaste evaluate --json``: metrics at the top, samples below."""
        out = self.metrics.to_dict()
        predicted = [s >= self.threshold for s in self.scores]
        out["threshold"] = self.threshold
        out["accuracy_at_threshold"] = sum(p == bool(y) for p, y in zip(predicted, self.labels, strict=True)) / max(
            len(self.labels), 1
        )
        out["missing_masks"] = self.missing_masks
        out["samples"] = [
            {"path": p, "label": y, "defect_type": d, "score": s, "anomalous": a}
            for p, y, d, s, a in zip(self.paths, self.labels, self.defect_types, self.scores, predicted, strict=True)
        ]
        return out


def score_samples(detector: Detector, samples: Sequence[Sample]) -> torch.Tensor:
    """``(N,)`` anomaly scores of the samples' images, decoded at the detector's size."""
    images = load_images([s.path for s in samples], detector.config.image_size)
    return detector.score(images)


def evaluate_detector(detector: Detector, samples: Sequence[Sample]) -> Evaluation:
    scores = score_samples(detector, samples).tolist()
    labels = [s.label for s in samples]
    defects = [s.defect_type for s in samples]
    return Evaluation(
        metrics=image_metrics(labels, scores, defects),
        scores=scores,
        labels=labels,
        defect_types=defects,
        paths=[str(s.path) for s in samples],
        threshold=detector.threshold,
        missing_masks=[str(s.path) for s in samples if s.label == 1 and s.mask_path is None],
    )
