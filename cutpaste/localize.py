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
from cutpaste.evaluate import Evaluation
from cutpaste.heatmaps import colour_bar, grid_figure, overlay_panel, save_png, stack, to_hwc
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


def localize_category(
    detector: Detector,
    data_root: str | Path,
    category: str,
    out_dir: str | Path,
    *,
    map_mode: str = "auto",
    progress: bool = True,
) -> LocalizeResult:
    out_dir = Path(out_dir)
    evaluation = evaluate_category(detector, data_root, category, map_mode=map_mode, keep_maps=True)
    assert evaluation.maps is not None and evaluation.images is not None
    value_range = detector.map_range
    by_defect: dict[str, list[Image.Image]] = {}
    items = list(enumerate(evaluation.paths))
    for i, path in tqdm(items, desc="overlays", unit="img", disable=not progress, leave=False):
        defect, score = evaluation.defect_types[i], evaluation.scores[i]
        mask = evaluation.masks[i].numpy() if evaluation.masks is not None else None
        caption = f"{defect}/{Path(path).stem}  score {score:.3f}  {_verdict(score, evaluation.threshold)}"
        panel = overlay_panel(to_hwc(evaluation.images[i]), evaluation.maps[i].numpy(), value_range, mask, caption)
        save_png(panel, out_dir / defect / f"{Path(path).stem}.png")
        chosen = by_defect.setdefault(defect, [])
        if len(chosen) < GRID_PER_DEFECT:
            scale = GRID_PANEL_WIDTH / panel.width
            chosen.append(panel.resize((GRID_PANEL_WIDTH, round(panel.height * scale)), Image.Resampling.BILINEAR))
    report = evaluation.to_dict()
    report.update({"category": category, "map_mode": map_mode, "map_range": list(value_range)})
    pixel = f"  pixel AUROC {report['pixel_auroc']:.3f}  AUPRO {report['aupro']:.3f}" if "aupro" in report else ""
    title = f"{category}: image AUROC {report['image_auroc']:.3f}{pixel}"
    ordered = [p for defect in sorted(by_defect, key=lambda d: (d != "good", d)) for p in by_defect[defect]]
    grid = save_png(grid_figure(ordered, columns=GRID_PER_DEFECT, title=title), out_dir / f"{category}_grid.png")
    json_path = out_dir / "metrics.json"
    atomic_write_text(json.dumps(report, indent=2), json_path)
    return LocalizeResult(report=report, panels=len(items), grid=grid, json=json_path)


def sample_heatmaps(evaluation: Evaluation, value_range: tuple[float, float], *, title: str = "") -> Image.Image | None:
    """The review figure (MLflow, reports): the best and the worst of both kinds, the highest- and
    lowest-scored defective images (a clear find, the likeliest miss) and the highest- and lowest-scored
    good ones (the false alarm most worth seeing, a clean pass), on one colour scale stated under them.
    None without maps."""
    if evaluation.maps is None or evaluation.images is None:
        return None
    order = sorted(range(len(evaluation.scores)), key=lambda i: -evaluation.scores[i])
    bad = [i for i in order if evaluation.labels[i] == 1]
    good = [i for i in order if evaluation.labels[i] == 0]
    picks = [
        ("highest-scored defective", bad[:1]),
        ("lowest-scored defective", bad[1:][-1:]),
        ("highest-scored good", good[:1]),
        ("lowest-scored good", good[1:][-1:]),
    ]
    panels = []
    for role, chosen in picks:
        for i in chosen:
            mask = evaluation.masks[i].numpy() if evaluation.masks is not None else None
            name = f"{evaluation.defect_types[i]}/{Path(evaluation.paths[i]).stem}"
            caption = f"{role}: {name}  score {evaluation.scores[i]:.3f}"
            panel = overlay_panel(to_hwc(evaluation.images[i]), evaluation.maps[i].numpy(), value_range, mask, caption)
            scale = GRID_PANEL_WIDTH / panel.width
            panels.append(panel.resize((GRID_PANEL_WIDTH, round(panel.height * scale)), Image.Resampling.BILINEAR))
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
