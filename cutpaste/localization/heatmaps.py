"""Heatmap pictures: an overlay panel per image and a grid per category, with PIL only.

Every map of a detector shares one colour scale (:attr:`Detector.map_range`): the calibrated
threshold sits in the middle, so a normal image looks cold and a defect hot in every picture.
Panels: the image with the ground-truth contour (green), the heatmap, and the heatmap blended over the
image with the same contour.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from cutpaste.atomic import atomic_write_bytes

CONTOUR = np.array([0, 255, 0], dtype=np.uint8)


def colourise(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """``(H, W)`` values -> ``(H, W, 3)`` uint8 with a jet-like scale from ``low`` (blue) to ``high`` (red)."""
    t = np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0)[..., None]
    rgb = np.clip(1.5 - np.abs(4.0 * t - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)
    return (rgb * 255).astype(np.uint8)


def contour(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a binary ``(H, W)`` mask: the mask minus its 3x3 erosion."""
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    eroded = -F.max_pool2d(-m, 3, stride=1, padding=1)
    return ((m - eroded)[0, 0] > 0).numpy()


def overlay_panel(
    image: np.ndarray,
    heatmap: np.ndarray,
    value_range: tuple[float, float],
    mask: np.ndarray | None = None,
    caption: str = "",
) -> Image.Image:
    """``image (H, W, 3)`` uint8, ``heatmap (H, W)``: three panels side by side, caption above."""
    height, width = heatmap.shape
    if image.shape[:2] != (height, width):
        image = np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))
    colours = colourise(heatmap, *value_range)
    blended = (0.55 * image + 0.45 * colours).astype(np.uint8)
    left = image.copy()
    if mask is not None and mask.any():
        edge = contour(mask)
        left[edge] = CONTOUR
        blended[edge] = CONTOUR
    strip = 14 if caption else 0
    canvas = Image.new("RGB", (3 * width + 8, height + strip), (255, 255, 255))
    for k, part in enumerate((left, colours, blended)):
        canvas.paste(Image.fromarray(part), (k * (width + 4), strip))
    if caption:
        ImageDraw.Draw(canvas).text((2, 1), caption, fill=(0, 0, 0))
    return canvas


def save_png(picture: Image.Image, path: str | Path) -> Path:
    """Atomically: a picture is either complete or absent."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return atomic_write_bytes(buffer.getvalue(), Path(path))


def grid_figure(panels: Sequence[Image.Image], *, columns: int = 4, title: str = "") -> Image.Image:
    """Panels tiled row by row under a title line."""
    if not panels:
        raise ValueError("grid_figure needs at least one panel")
    width = max(p.width for p in panels)
    height = max(p.height for p in panels)
    rows = -(-len(panels) // columns)
    top = 16 if title else 0
    canvas = Image.new("RGB", (columns * width, rows * height + top), (255, 255, 255))
    for i, panel in enumerate(panels):
        canvas.paste(panel, ((i % columns) * width, top + (i // columns) * height))
    if title:
        ImageDraw.Draw(canvas).text((4, 2), title, fill=(0, 0, 0))
    return canvas


def colour_bar(value_range: tuple[float, float], width: int, *, note: str = "") -> Image.Image:
    """The colour scale as a labelled strip: what blue, the middle and red mean, stated on the figure."""
    low, high = value_range
    gradient = colourise(np.tile(np.linspace(low, high, width - 8), (10, 1)), low, high)
    canvas = Image.new("RGB", (width, 44), (255, 255, 255))
    canvas.paste(Image.fromarray(gradient), (4, 16))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), note or "colour scale, the same for every panel", fill=(0, 0, 0))
    draw.text((4, 28), f"{low:.3g}", fill=(0, 0, 0))
    middle = f"{(low + high) / 2:.3g}"
    draw.text((width // 2 - 3 * len(middle), 28), middle, fill=(0, 0, 0))
    draw.text((width - 8 - 6 * len(f"{high:.3g}"), 28), f"{high:.3g}", fill=(0, 0, 0))
    return canvas


def stack(pictures: Sequence[Image.Image]) -> Image.Image:
    """Pictures one under the other, left-aligned on white."""
    canvas = Image.new("RGB", (max(p.width for p in pictures), sum(p.height for p in pictures)), (255, 255, 255))
    top = 0
    for picture in pictures:
        canvas.paste(picture, (0, top))
        top += picture.height
    return canvas


def to_hwc(image: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` uint8 or float in [0, 1] -> ``(H, W, 3)`` uint8."""
    if image.dtype != torch.uint8:
        image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    return image.permute(1, 2, 0).cpu().numpy()
