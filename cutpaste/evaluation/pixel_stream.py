"""Pixel AUROC and AUPRO at the masks' resolution, one image at a time, in memory that does not grow
with the number of images.

The exact computation (:mod:`cutpaste.evaluation.pixel_metrics`) sorts every pixel of every upsampled map at
once: about 150 bytes per mask pixel, 25 GB for an MVTec category with 1024 x 1024 masks. Here each
model-resolution map is upsampled to its mask's size as it is consumed, and three fixed-size
histograms over a fine grid of score bins are all that is kept: normal pixels, defect pixels, and
defect pixels weighted by ``1 / size of their region``. The ROC and PRO curves are then exact at every
bin edge (the curve's points at those thresholds), and trapezoids between them differ from the exact
area by at most the largest fraction of pixels that one bin holds.

The bin edges come from the model-resolution maps before any upsampling: bilinear upsampling never
leaves the [min, max] of its input, and its values are spread like the input's. So the edges are a
uniform grid over [min, max] (maps with few distinct values) joined with quantiles of the maps' values
(maps whose values crowd in a small part of their range: heavy tails, outliers).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from cutpaste.evaluation.pixel_metrics import AUPRO_FPR_LIMIT, PixelMetrics, area_up_to

# Edges from each source: 2 x 2^14 bins hold ~3e-5 of the pixels each, far under the 1e-3 we promise.
UNIFORM_EDGES = 1 << 14
QUANTILE_EDGES = 1 << 14
# Values the quantiles are taken from (an even stride through all maps): a fixed cost for any split.
_QUANTILE_SAMPLE = 1 << 22
# 8-connected regions in one image (diagonal neighbours join), as the MVTec AD evaluation labels them.
_STRUCTURE = np.ones((3, 3), dtype=bool)


def score_edges(maps: torch.Tensor) -> torch.Tensor:
    """``(N, S, S)`` model-resolution maps -> ``(E,)`` float32 ascending bin edges, ``E <= 2^15``, the
    first the maps' minimum and the last their maximum (upsampled values lie in between)."""
    values = maps.detach().reshape(-1).float().cpu()
    if values.numel() == 0:
        raise ValueError("pixel metrics need at least one map")
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{int((~torch.isfinite(values)).sum())} map values are not finite")
    low, high = float(values.min()), float(values.max())
    uniform = torch.linspace(low, high, UNIFORM_EDGES, dtype=torch.float64).float()
    sample = values[:: max(1, values.numel() // _QUANTILE_SAMPLE)].sort().values
    positions = torch.linspace(0, sample.numel() - 1, QUANTILE_EDGES).round().long()
    edges = torch.cat([uniform, sample[positions], torch.tensor([low, high])])
    return torch.unique(edges)


class StreamingPixelMetrics:
    """Accumulates pixel AUROC and AUPRO image by image: :meth:`add` one ``(h, w)`` map with its
    ``(H, W)`` mask at a time, :meth:`result` at the end. State: three ``(E,)`` histograms and a few
    counters, whatever the number of images."""

    def __init__(self, edges: torch.Tensor):
        self.edges = edges.float().contiguous()
        bins = self.edges.numel()
        self.normal = torch.zeros(bins, dtype=torch.float64)
        self.defect = torch.zeros(bins, dtype=torch.float64)
        # Defect pixels weighted by 1 / (their region's size): the sum above a threshold, over the number
        # of regions, is the mean per-region overlap (PRO) there.
        self.overlap = torch.zeros(bins, dtype=torch.float64)
        self.num_regions = 0
        self.empty_masks = 0

    @property
    def state_nbytes(self) -> int:
        """Bytes held between images (the histograms): fixed by the number of edges."""
        return sum(t.numel() * t.element_size() for t in (self.edges, self.normal, self.defect, self.overlap))

    def add(self, scores: torch.Tensor, mask: torch.Tensor | np.ndarray, label: int) -> None:
        """One image: ``scores`` ``(h, w)`` at the model's size, upsampled (bilinear) to ``mask``'s
        ``(H, W)`` here; ``label`` 1 with an all-zero mask counts as an empty mask (all pixels normal)."""
        mask_t = torch.as_tensor(np.asarray(mask), dtype=torch.bool)
        if mask_t.ndim != 2 or scores.ndim != 2:
            raise ValueError(
                f"one map (h, w) and one mask (H, W) at a time, got {tuple(scores.shape)} and {tuple(mask_t.shape)}"
            )
        upsampled = scores.detach().float().cpu()
        if tuple(upsampled.shape) != tuple(mask_t.shape):
            upsampled = F.interpolate(
                upsampled[None, None], size=tuple(mask_t.shape), mode="bilinear", align_corners=False
            )[0, 0]
        bins = torch.bucketize(upsampled.reshape(-1), self.edges, right=True, out_int32=True).sub_(1).clamp_(min=0)
        size = self.edges.numel()
        every = torch.bincount(bins, minlength=size)
        flat_mask = mask_t.reshape(-1)
        if not bool(flat_mask.any()):
            self.normal += every
            self.empty_masks += int(label == 1)
            return
        labels, count = ndimage.label(mask_t.numpy(), structure=_STRUCTURE)
        where = flat_mask.nonzero().squeeze(1)  # defect pixels: usually a small part of the image
        regions = torch.from_numpy(labels.reshape(-1)[where.numpy()].astype(np.int64))
        region_size = torch.bincount(regions, minlength=count + 1).double()
        defect_bins = bins[where]
        defect = torch.bincount(defect_bins, minlength=size)
        self.defect += defect
        self.normal += every - defect
        self.overlap += torch.bincount(defect_bins, weights=1.0 / region_size[regions], minlength=size)
        self.num_regions += int(count)

    def curves(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """FPR, TPR and PRO at every occupied bin's lower edge (descending thresholds), from (0, 0, 0)."""
        used = (self.normal + self.defect) > 0
        normal, defect, overlap = (t[used].flip(0).cumsum(0).numpy() for t in (self.normal, self.defect, self.overlap))
        fpr = normal / max(normal[-1], 1.0)
        tpr = defect / max(defect[-1], 1.0)
        pro = overlap / max(self.num_regions, 1)
        return np.r_[0.0, fpr], np.r_[0.0, tpr], np.r_[0.0, pro]

    def result(self) -> PixelMetrics:
        """Both metrics as :func:`cutpaste.evaluation.pixel_metrics.pixel_metrics` reports them, with the same notes."""
        empty = self.empty_masks
        note = f"{empty} defective image(s) have an all-zero mask (counted as normal pixels)" if empty else ""
        if float(self.defect.sum()) == 0:
            return PixelMetrics(None, None, 0, empty, "no defect pixel in any mask: pixel metrics skipped")
        if float(self.normal.sum()) == 0:
            return PixelMetrics(None, None, 0, empty, "no normal pixel in the masks: pixel metrics skipped")
        fpr, tpr, pro = self.curves()
        auroc = float(np.trapezoid(tpr, fpr))
        return PixelMetrics(auroc, area_up_to(fpr, pro, AUPRO_FPR_LIMIT), self.num_regions, empty, note)
