"""``cutpaste localize`` and ``cutpaste predict --heatmap``: anomaly maps as pictures and metrics.

Output of :func:`localize_category` in ``out_dir``:

    <defect>/<name>.png   image + GT contour | heatmap | overlay, one per test image
    <category>_grid.png   a few panels of every defect type side by side
    metrics.json          image metrics, pixel AUROC and AUPRO (when masks exist), per-image scores
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from cutpaste.atomic import atomic_write_text
from cutpaste.detector import Detector
from cutpaste.evaluation.evaluate import MapBatch
from cutpaste.localization.heatmaps import colour_bar, grid_figure, overlay_panel, save_png, stack, to_hwc
from cutpaste.workflow import evaluate_category

# Panels per defect type in the category grid, and the grid's panel width in pixels.
GRID_PER_DEFECT = 3
GRID_PANEL_WIDTH = 390


@dataclass
class LocalizeResult:
    report: dict
    panels: int
    grid: Path
    json: Path


def _verdict(score: float, threshold: float) -> str:
    return "ANOMALOUS" if score >= threshold else "normal"


class _OverlayWriter:
    """``on_maps`` of ``cutpaste localize``: writes each test image's panel as its pass comes and keeps
    only the few (downscaled) panels the category grid shows."""

    def __init__(self, out_dir: Path, value_range: tuple[float, float], threshold: float, progress: bool):
        self.out_dir, self.value_range, self.threshold = out_dir, value_range, threshold
        self.by_defect: dict[str, list[Image.Image]] = {}
        self.panels = 0
        self.bar = tqdm(desc="overlays", unit="img", disable=not progress, leave=False)

    def __call__(self, batch: MapBatch) -> None:
        for j, (sample, score) in enumerate(zip(batch.samples, batch.scores, strict=True)):
            stem, defect = Path(sample.path).stem, sample.defect_type
            mask = batch.masks[j].numpy() if batch.masks is not None else None
            caption = f"{defect}/{stem}  score {score:.3f}  {_verdict(score, self.threshold)}"
            panel = overlay_panel(to_hwc(batch.images[j]), batch.maps[j].numpy(), self.value_range, mask, caption)
            save_png(panel, self.out_dir / defect / f"{stem}.png")
            chosen = self.by_defect.setdefault(defect, [])
            if len(chosen) < GRID_PER_DEFECT:
                chosen.append(_grid_panel(panel))
            self.panels += 1
            self.bar.update(1)


def _grid_panel(panel: Image.Image) -> Image.Image:
    scale = GRID_PANEL_WIDTH / panel.width
    return panel.resize((GRID_PANEL_WIDTH, round(panel.height * scale)), Image.Resampling.BILINEAR)


def localize_category(
    detector: Detector,
    data_root: str | Path,
    category: str,
    out_dir: str | Path,
    *,
    map_mode: str = "auto",
    progress: bool = True,
) -> LocalizeResult:
    """Overlays written as the test split is scored (never all maps at once), then the grid and metrics."""
    out_dir = Path(out_dir)
    writer = _OverlayWriter(out_dir, detector.map_range, detector.threshold, progress)
    try:
        evaluation = evaluate_category(detector, data_root, category, map_mode=map_mode, on_maps=writer)
    finally:
        writer.bar.close()
    report = evaluation.to_dict()
    report.update({"category": category, "map_mode": map_mode, "map_range": list(detector.map_range)})
    pixel = f"  pixel AUROC {report['pixel_auroc']:.3f}  AUPRO {report['aupro']:.3f}" if "aupro" in report else ""
    title = f"{category}: image AUROC {report['image_auroc']:.3f}{pixel}"
    by_defect = writer.by_defect
    ordered = [p for defect in sorted(by_defect, key=lambda d: (d != "good", d)) for p in by_defect[defect]]
    grid = save_png(grid_figure(ordered, columns=GRID_PER_DEFECT, title=title), out_dir / f"{category}_grid.png")
    json_path = out_dir / "metrics.json"
    atomic_write_text(json.dumps(report, indent=2), json_path)
    return LocalizeResult(report=report, panels=writer.panels, grid=grid, json=json_path)


@dataclass
class _Pick:
    """One panel the review figure may show: its image ``(3, S, S)``, map ``(S, S)``, mask ``(S, S)``."""

    score: float
    name: str
    image: torch.Tensor
    heatmap: torch.Tensor
    mask: torch.Tensor | None


class ReviewPicks:
    """``on_maps`` for the review figure: keeps, as the passes come, only the four images it shows (the
    highest- and lowest-scored defective and good ones), never the split's maps."""

    def __init__(self) -> None:
        self.high: dict[int, _Pick] = {}
        self.low: dict[int, _Pick] = {}
        self.count = {0: 0, 1: 0}

    def __call__(self, batch: MapBatch) -> None:
        for j, (sample, score) in enumerate(zip(batch.samples, batch.scores, strict=True)):
            label = sample.label
            self.count[label] += 1
            # Ties: the first image of the highest score and the last of the lowest, as a stable sort orders them.
            take_high = label not in self.high or score > self.high[label].score
            take_low = label not in self.low or score <= self.low[label].score
            if take_high or take_low:
                mask = batch.masks[j].clone() if batch.masks is not None else None
                name = f"{sample.defect_type}/{Path(sample.path).stem}"
                pick = _Pick(score, name, batch.images[j].clone(), batch.maps[j].clone(), mask)
                if take_high:
                    self.high[label] = pick
                if take_low:
                    self.low[label] = pick

    def chosen(self) -> list[tuple[str, _Pick]]:
        """(role, pick) in the figure's order; a kind's lowest only when it has a second image."""
        roles = []
        for label, kind in ((1, "defective"), (0, "good")):
            if label in self.high:
                roles.append((f"highest-scored {kind}", self.high[label]))
            if self.count[label] > 1:
                roles.append((f"lowest-scored {kind}", self.low[label]))
        return roles


def sample_heatmaps(picks: ReviewPicks, value_range: tuple[float, float], *, title: str = "") -> Image.Image | None:
    """The review figure (MLflow, reports): the best and the worst of both kinds, the highest- and
    lowest-scored defective images (a clear find, the likeliest miss) and the highest- and lowest-scored
    good ones (the false alarm most worth seeing, a clean pass), on one colour scale stated under them.
    None without maps."""
    panels = []
    for role, pick in picks.chosen():
        caption = f"{role}: {pick.name}  score {pick.score:.3f}"
        mask = pick.mask.numpy() if pick.mask is not None else None
        panels.append(_grid_panel(overlay_panel(to_hwc(pick.image), pick.heatmap.numpy(), value_range, mask, caption)))
    if not panels:
        return None
    note = "map colour, fixed for all panels: blue typical normal, middle = threshold, red twice as far"
    return stack([grid_figure(panels, columns=1, title=title), colour_bar(value_range, GRID_PANEL_WIDTH, note=note)])


def write_prediction_heatmaps(
    detector: Detector,
    images: torch.Tensor,
    maps: torch.Tensor,
    scores: torch.Tensor,
    paths: Sequence[str],
    out_dir: str | Path,
    *,
    threshold: float,
) -> list[Path]:
    """One overlay per input image, named after it (``<stem>.png``; a repeated stem gets ``-<k>``)."""
    out_dir = Path(out_dir)
    written: list[Path] = []
    seen: dict[str, int] = {}
    for image, heatmap, score, path in zip(images, maps, scores.tolist(), paths, strict=True):
        stem = Path(path).stem
        seen[stem] = seen.get(stem, 0) + 1
        name = stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"
        caption = f"{Path(path).name}  score {score:.3f}  {_verdict(score, threshold)}"
        panel = overlay_panel(to_hwc(image), heatmap.numpy(), detector.map_range, None, caption)
        written.append(save_png(panel, out_dir / f"{name}.png"))
    return written
