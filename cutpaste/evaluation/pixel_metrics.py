"""Pixel-level localization metrics: pixel AUROC and AUPRO (Bergmann et al., MVTec AD, IJCV 2021).

AUPRO is computed exactly at every distinct score, without a threshold loop: sort all pixels by
score once; the false-positive rate is the running count of normal pixels, and the mean per-region
overlap is the running sum of ``1 / (region size * number of regions)`` over defect pixels. A whole
MVTec category (tens of millions of pixels) takes seconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import ndimage

# The MVTec AD protocol integrates the PRO curve up to 30 % false-positive rate.
AUPRO_FPR_LIMIT = 0.3


@dataclass
class PixelMetrics:
    pixel_auroc: float | None
    aupro: float | None
    num_regions: int
    # Defective images whose mask has no defect pixel: they count as all-normal pixels.
    empty_masks: int
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _as_arrays(masks: torch.Tensor | np.ndarray, maps: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = masks.cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    s = maps.cpu().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps)
    if m.shape != s.shape or m.ndim != 3:
        raise ValueError(f"masks and maps must both be (N, H, W), got {m.shape} and {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError(f"{int((~np.isfinite(s)).sum())} map values are not finite")
    return m.astype(bool), s.astype(np.float32, copy=False)


def _curves(m: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """One descending sort of all pixels -> FPR, TPR and PRO at every distinct value, from (0, 0, 0)."""
    labels, num_regions = _regions(m)
    normal = ~m
    num_normal = int(normal.sum())
    num_defect = m.size - num_normal
    if num_regions == 0 or num_normal == 0:
        raise ValueError("pixel metrics need at least one defect pixel and one normal pixel")
    sizes = np.bincount(labels.ravel(), minlength=num_regions + 1).astype(np.float64)
    region_weight = np.zeros(num_regions + 1)
    region_weight[1:] = 1.0 / (sizes[1:] * num_regions)
    ranked, order = torch.sort(torch.from_numpy(s.ravel()), descending=True)
    ranked, order = ranked.numpy(), order.numpy()
    fpr = np.cumsum(normal.ravel()[order], dtype=np.float64) / num_normal
    tpr = np.cumsum(m.ravel()[order], dtype=np.float64) / num_defect
    pro = np.cumsum(region_weight[labels.ravel()[order]])
    # One point per distinct value: the last pixel of each run of equal scores (ties move together).
    last = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])
    return np.r_[0.0, fpr[last]], np.r_[0.0, tpr[last]], np.r_[0.0, pro[last]], num_regions


def pro_curve(masks: torch.Tensor | np.ndarray, maps: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False-positive rates and mean per-region overlaps at every distinct map value (descending),
    starting at (0, 0). Regions are the 8-connected components of each image's mask, as in the MVTec AD
    evaluation code (a 3x3 structuring element)."""
    fpr, _, pro, _ = _curves(*_as_arrays(masks, maps))
    return fpr, pro


def area_up_to(fpr: np.ndarray, pro: np.ndarray, fpr_limit: float) -> float:
    """Trapezoids under ``pro`` over ascending ``fpr`` up to ``fpr_limit`` (the curve interpolated
    there), divided by ``fpr_limit``."""
    end = int(np.searchsorted(fpr, fpr_limit, side="right"))
    x, y = fpr[:end], pro[:end]
    if end < len(fpr) and x[-1] < fpr_limit:  # interpolate the curve at the limit
        f0, f1, p0, p1 = fpr[end - 1], fpr[end], pro[end - 1], pro[end]
        x = np.r_[x, fpr_limit]
        y = np.r_[y, p0 + (p1 - p0) * (fpr_limit - f0) / (f1 - f0)]
    return float(np.trapezoid(y, x) / fpr_limit)


def aupro(
    masks: torch.Tensor | np.ndarray, maps: torch.Tensor | np.ndarray, fpr_limit: float = AUPRO_FPR_LIMIT
) -> float:
    """Area under the PRO curve up to ``fpr_limit``, divided by ``fpr_limit`` (1.0 is perfect)."""
    fpr, pro = pro_curve(masks, maps)
    return area_up_to(fpr, pro, fpr_limit)


def pixel_metrics(masks: torch.Tensor | np.ndarray, maps: torch.Tensor | np.ndarray, labels: list[int]) -> PixelMetrics:
    """Both metrics over a split from one sort; ``labels`` (0 good, 1 defective) per image count empty masks.

    Pixel AUROC is the trapezoid under the ROC at every distinct value, as
    :func:`sklearn.metrics.roc_auc_score` computes it (the tests check they agree)."""
    m, s = _as_arrays(masks, maps)
    empty = int(sum(1 for i, y in enumerate(labels) if y == 1 and not m[i].any()))
    note = f"{empty} defective image(s) have an all-zero mask (counted as normal pixels)" if empty else ""
    if not m.any():
        return PixelMetrics(None, None, 0, empty, "no defect pixel in any mask: pixel metrics skipped")
    if m.all():
        return PixelMetrics(None, None, 0, empty, "no normal pixel in the masks: pixel metrics skipped")
    fpr, tpr, pro, regions = _curves(m, s)
    return PixelMetrics(float(np.trapezoid(tpr, fpr)), area_up_to(fpr, pro, AUPRO_FPR_LIMIT), regions, empty, note)


def _regions(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected defect regions of every image (diagonal neighbours join, as in the MVTec AD
    evaluation), labelled in one call; the empty planes above and below keep regions inside an image."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 2)
    labels, count = ndimage.label(masks, structure=structure)
    return labels, int(count)
