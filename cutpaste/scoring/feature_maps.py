"""Local scoring for the image-level model: Gaussians over the positions of a stage's feature map.

The paper scores an image by one Gaussian on its pooled embedding. A small defect moves that pooled
vector little, and a missing part (MVTec transistor's ``misplaced``) is a normal-looking region at a
place where something else belongs. Scoring each position of an intermediate feature map (pooled to a
``local_grid`` square) against the training images' features at that position (aligned objects) or
at any position (textures) catches both, from the same forward pass; the image score is the grid's
maximum and the grid, upsampled, is the anomaly map. This is an addition of ours in the spirit of
PaDiM (Defard et al., 2021), not the paper's protocol; ``image_score=global`` keeps the paper's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cutpaste.config import TrainConfig
from cutpaste.model.dense import gaussian_kernel
from cutpaste.model.network import CutPasteNet, as_float_images
from cutpaste.scoring.grid_gaussians import Layout
from cutpaste.scoring.registry import Scorer, fit_scorer


@torch.no_grad()
def image_and_grid_features(
    model: CutPasteNet, images: Tensor, config: TrainConfig, *, device: torch.device | None = None
) -> tuple[Tensor, Tensor]:
    """``(N, 3, H, W)`` -> embeddings ``(N, D)`` and grid features ``(N, G * G, C)``, float32 on the CPU,
    with ``G = config.local_grid`` and ``C`` the summed width of the ``config.feature_stages`` stages
    ending at ``config.local_stage`` (each map pooled to the grid, then concatenated)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    embeddings, grids = [], []
    for chunk in images.split(config.eval_batch_size):
        x = as_float_images(chunk.to(device, non_blocking=True), config.image_size)
        embedding, maps = model.embed_with_maps(x, config.feature_map_stages)
        pooled = torch.cat([F.adaptive_avg_pool2d(m.float(), config.local_grid) for m in maps], dim=1)
        embeddings.append(embedding.float().cpu())
        grids.append(pooled.flatten(2).transpose(1, 2).cpu())
    model.train(was_training)
    return torch.cat(embeddings), torch.cat(grids)


def fit_feature_scorer(features: Tensor, layout: Layout, config: TrainConfig) -> Scorer:
    """The scorer of ``(N, G * G, C)`` feature-map grids that ``config`` asks for, in ``layout``: the detector
    and the scorer selection fit it alike."""
    return fit_scorer(layout, features, grid=config.local_grid, dim=config.local_dim, seed=config.seed)


def grid_to_maps(grid_scores: Tensor, image_size: int) -> Tensor:
    """``(N, G, G)`` position scores -> ``(N, S, S)`` pixel maps: bilinear upsampling, then a Gaussian
    (sigma 4 px at 256 px, scaled) so that a map has no block edges."""
    maps = F.interpolate(
        grid_scores.float()[:, None], size=(image_size, image_size), mode="bilinear", align_corners=False
    )
    sigma = 4.0 * image_size / 256.0
    size = 2 * round(2 * sigma) + 1
    kernel = gaussian_kernel(size, sigma).to(maps.device)
    kernel = (kernel / kernel.sum())[None, None]
    return F.conv2d(F.pad(maps, (size // 2,) * 4, mode="replicate"), kernel)[:, 0]


def grid_image_scores(grid_scores: Tensor, how: str = "max") -> Tensor:
    """``(N, ...)`` position scores -> ``(N,)`` float64 image scores: the maximum, or with ``max-median``
    the maximum less the image's median position score (see ``TrainConfig.feature_score``)."""
    flat = grid_scores.flatten(1).double()
    peak = flat.amax(1)
    if how == "max":
        return peak
    if how == "max-median":
        return peak - flat.median(1).values
    raise ValueError(f"feature_score: unknown {how!r}")
