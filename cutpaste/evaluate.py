"""Score a category's test split with a detector: image metrics, and pixel metrics where masks exist."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from cutpaste.data.images import load_images, load_masks, mask_resolution
from cutpaste.data.layout import Sample
from cutpaste.detector import Detector
from cutpaste.metrics import ImageMetrics, image_metrics
from cutpaste.pixel_metrics import PixelMetrics, pixel_metrics
from cutpaste.threshold import false_positive_report


@dataclass
class Evaluation:
    metrics: ImageMetrics
    scores: list[float]
    labels: list[int]
    defect_types: list[str]
    paths: list[str]
    threshold: float
    missing_masks: list[str] = field(default_factory=list)
    # Pixel metrics (None when no mask exists or maps were not asked for) and why they are missing.
    pixel: PixelMetrics | None = None
    pixel_note: str = ""
    # (N, S, S) anomaly maps and (N, S, S) masks at the detector's size, when computed; not in the JSON.
    maps: torch.Tensor | None = None
    masks: torch.Tensor | None = None
    images: torch.Tensor | None = None
    # The detector's threshold calibration (``meta["calibration"]``): what ``test_fpr`` is set beside.
    calibration: dict | None = None

    def to_dict(self) -> dict:
        """The JSON shape of ``cutpaste evaluate --json``: metrics at the top, samples below."""
        out = self.metrics.to_dict()
        if self.pixel is not None:
            out["pixel_auroc"] = self.pixel.pixel_auroc
            out["aupro"] = self.pixel.aupro
            out["defect_regions"] = self.pixel.num_regions
            out["empty_masks"] = self.pixel.empty_masks
        if self.pixel_note:
            out["pixel_note"] = self.pixel_note
        predicted = [s >= self.threshold for s in self.scores]
        out["threshold"] = self.threshold
        out["accuracy_at_threshold"] = sum(p == bool(y) for p, y in zip(predicted, self.labels, strict=True)) / max(
            len(self.labels), 1
        )
        out.update(false_positive_report(self.scores, self.labels, self.threshold, self.calibration))
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


def pixel_metrics_at_mask_resolution(samples: Sequence[Sample], maps: torch.Tensor) -> PixelMetrics:
    """Pixel AUROC and AUPRO as the MVTec AD evaluation computes them: maps ``(N, S, S)`` at the model's
    size are upsampled (bilinear) to the ground-truth masks' own resolution and compared there, not
    the masks shrunk to the model's input (64 px in ``demo``), which would blur thin defects away."""
    side = mask_resolution(samples) or maps.shape[-1]
    masks = load_masks(samples, side)
    if masks is None:
        masks = torch.zeros((len(samples), side, side), dtype=torch.bool)
    if maps.shape[-1] != side:
        maps = F.interpolate(maps.float()[:, None], size=(side, side), mode="bilinear", align_corners=False)[:, 0]
    return pixel_metrics(masks, maps, [s.label for s in samples])


def evaluate_detector(
    detector: Detector,
    samples: Sequence[Sample],
    *,
    pixel: bool = True,
    map_mode: str = "auto",
    keep_maps: bool = False,
) -> Evaluation:
    """Image metrics always; with ``pixel`` and ground-truth masks, anomaly maps (dense for a patch
    model, GradCAM for the image model) and pixel AUROC / AUPRO over the images that have masks.
    ``keep_maps`` computes the maps even without masks (for pictures)."""
    size = detector.config.image_size
    images = load_images([s.path for s in samples], size)
    labels = [s.label for s in samples]
    defects = [s.defect_type for s in samples]
    masks = load_masks(samples, size) if pixel else None
    maps, pixel_result, note = None, None, ""
    if pixel and masks is None:
        note = "no ground-truth masks for the defective images: pixel metrics skipped, image metrics reported"
    has_maps = hasattr(detector, "anomaly_maps")
    if pixel and masks is not None and not has_maps:
        masks, note = None, f"{type(detector).__name__} gives no anomaly maps: pixel metrics skipped"
    if has_maps and (keep_maps or masks is not None or (pixel and getattr(detector, "is_patch_model", False))):
        score_tensor, maps = detector.anomaly_maps(images, map_mode)
    else:
        score_tensor = detector.score(images)
    if masks is not None and maps is not None:
        # Defective images without a mask cannot be scored per pixel; good images are all-normal.
        keep = [i for i, s in enumerate(samples) if s.label == 0 or s.mask_path is not None]
        pixel_result = pixel_metrics_at_mask_resolution([samples[i] for i in keep], maps[keep])
        note = pixel_result.note
    scores = score_tensor.tolist()
    return Evaluation(
        metrics=image_metrics(labels, scores, defects),
        scores=scores,
        labels=labels,
        defect_types=defects,
        paths=[str(s.path) for s in samples],
        threshold=detector.threshold,
        missing_masks=[str(s.path) for s in samples if s.label == 1 and s.mask_path is None],
        pixel=pixel_result,
        pixel_note=note,
        maps=maps,
        masks=masks,
        images=images,
        calibration=getattr(detector, "meta", {}).get("calibration"),
    )
