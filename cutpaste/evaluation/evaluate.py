"""Score a category's test split with a detector: image metrics, and pixel metrics where masks exist."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from cutpaste.data.images import load_images, load_mask, load_masks, mask_resolution
from cutpaste.data.layout import Sample
from cutpaste.detector import Detector
from cutpaste.evaluation.metrics import ImageMetrics, image_metrics
from cutpaste.evaluation.pixel_metrics import PixelMetrics
from cutpaste.evaluation.pixel_stream import StreamingPixelMetrics, score_edges
from cutpaste.scoring.threshold import false_positive_report

# Test images scored per pass, and masks decoded ahead at the masks' resolution: what a pass holds does
# not grow with the split (a 1024 px mask is 1 MB, its upsampled map 4 MB).
EVAL_CHUNK = 32
MASK_PREFETCH = 8


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


@dataclass
class MapBatch:
    """One pass of :func:`evaluate_detector`, handed to its ``on_maps`` and then dropped: ``samples`` and
    their ``indices`` in the split, images ``(B, 3, S, S)`` uint8, maps ``(B, S, S)`` float32, masks
    ``(B, S, S)`` bool (None when no image of the pass has one) at the detector's size, and ``(B,)`` scores."""

    samples: list[Sample]
    indices: list[int]
    images: torch.Tensor
    maps: torch.Tensor
    masks: torch.Tensor | None
    scores: list[float]


def score_samples(detector: Detector, samples: Sequence[Sample]) -> torch.Tensor:
    """``(N,)`` anomaly scores of the samples' images, decoded at the detector's size."""
    images = load_images([s.path for s in samples], detector.config.image_size)
    return detector.score(images)


def pixel_metrics_at_mask_resolution(samples: Sequence[Sample], maps: torch.Tensor) -> PixelMetrics:
    """Pixel AUROC and AUPRO as the MVTec AD evaluation computes them: maps ``(N, S, S)`` at the model's
    size are upsampled (bilinear) to the ground-truth masks' own resolution and compared there, not
    the masks shrunk to the model's input (64 px in ``demo``), which would blur thin defects away.
    One image at a time: memory is one mask and its map, never the split's pixels."""
    side = mask_resolution(samples) or maps.shape[-1]
    accumulator = StreamingPixelMetrics(score_edges(maps))

    def mask(sample: Sample) -> torch.Tensor:
        if sample.mask_path is None:
            return torch.zeros((side, side), dtype=torch.bool)
        return load_mask(sample.mask_path, side, image_path=sample.path)

    with ThreadPoolExecutor(max_workers=min(4, MASK_PREFETCH)) as pool:
        for start in range(0, len(samples), MASK_PREFETCH):
            chunk = samples[start : start + MASK_PREFETCH]
            for offset, decoded in enumerate(pool.map(mask, chunk)):
                accumulator.add(maps[start + offset], decoded, chunk[offset].label)
    return accumulator.result()


def _score_in_passes(
    detector: Detector,
    samples: Sequence[Sample],
    map_mode: str | None,
    kept: torch.Tensor | None,
    on_maps: Callable[[MapBatch], None] | None,
) -> list[float]:
    """Scores ``EVAL_CHUNK`` images at a time; with a ``map_mode`` also their maps, copied into ``kept``
    ``(N, S, S)`` (the model's size: what pixel metrics are binned from) and handed to ``on_maps``."""
    size = detector.config.image_size
    scores: list[float] = []
    for start in range(0, len(samples), EVAL_CHUNK):
        chunk = list(samples[start : start + EVAL_CHUNK])
        images = load_images([s.path for s in chunk], size)
        if map_mode is None:
            scores += detector.score(images).tolist()
            continue
        batch_scores, maps = detector.anomaly_maps(images, map_mode)
        maps = maps.float().cpu()
        if kept is not None:
            kept[start : start + len(chunk)] = maps
        if on_maps is not None:
            indices = list(range(start, start + len(chunk)))
            on_maps(MapBatch(chunk, indices, images, maps, load_masks(chunk, size), batch_scores.tolist()))
        scores += batch_scores.tolist()
    return scores


def evaluate_detector(
    detector: Detector,
    samples: Sequence[Sample],
    *,
    pixel: bool = True,
    map_mode: str = "auto",
    on_maps: Callable[[MapBatch], None] | None = None,
) -> Evaluation:
    """Image metrics always; with ``pixel`` and ground-truth masks, anomaly maps (dense for a patch
    model, GradCAM for the image model) and pixel AUROC / AUPRO over the images that have masks.
    ``on_maps`` receives every pass's maps, even without masks (pictures written as they come); only
    maps at the model's size, ``(N, S, S)`` float32, are kept until the pixel metrics."""
    size = detector.config.image_size
    labels = [s.label for s in samples]
    defects = [s.defect_type for s in samples]
    has_masks = pixel and any(s.mask_path is not None for s in samples)
    note = ""
    if pixel and not has_masks:
        note = "no ground-truth masks for the defective images: pixel metrics skipped, image metrics reported"
    has_maps = hasattr(detector, "anomaly_maps")
    if has_masks and not has_maps:
        has_masks, note = False, f"{type(detector).__name__} gives no anomaly maps: pixel metrics skipped"
    want_maps = has_maps and (
        on_maps is not None or has_masks or (pixel and getattr(detector, "is_patch_model", False))
    )
    kept = torch.empty((len(samples), size, size), dtype=torch.float32) if want_maps and has_masks else None
    scores = _score_in_passes(detector, samples, map_mode if want_maps else None, kept, on_maps)
    pixel_result = None
    if kept is not None:
        # Defective images without a mask cannot be scored per pixel; good images are all-normal.
        keep = [i for i, s in enumerate(samples) if s.label == 0 or s.mask_path is not None]
        maps = kept if len(keep) == len(samples) else kept[keep]
        pixel_result = pixel_metrics_at_mask_resolution([samples[i] for i in keep], maps)
        note = pixel_result.note
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
        calibration=getattr(detector, "meta", {}).get("calibration"),
    )
