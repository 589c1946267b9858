"""Dense scoring with the patch-level model: every patch on a stride grid, encoded in large batches.

A 256 px image at stride 4 has 3249 patches of 32 px. They are cut out with one ``unfold`` view and
encoded ``patch_batch_size`` at a time on the device (the public reimplementations crop and encode
each patch on its own). Grid scores become a pixel map by spreading each patch's score over its
receptive field with a Gaussian kernel (FCDD-style transposed convolution), normalised by coverage so
that borders, covered by fewer patches, are not darker.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cutpaste.model.network import CutPasteNet, as_float_images
from cutpaste.model.patches import grid_patches, grid_size


@torch.no_grad()
def dense_embeddings(
    model: CutPasteNet,
    images: Tensor,
    *,
    image_size: int,
    patch_size: int,
    stride: int,
    patch_batch_size: int = 2048,
    device: torch.device | None = None,
) -> Tensor:
    """``(N, 3, H, W)`` images -> ``(N, G * G, D)`` float32 patch features on the CPU."""
    device = device or next(model.parameters()).device
    grid = grid_size(image_size, patch_size, stride)
    positions = grid * grid
    was_training = model.training
    model.eval()
    per_chunk = max(1, patch_batch_size // positions)
    out = torch.empty(images.shape[0], positions, model.feature_dim)
    done = 0
    for chunk in images.split(per_chunk):
        x = as_float_images(chunk.to(device, non_blocking=True), image_size)
        patches = grid_patches(x, patch_size, stride).reshape(-1, 3, patch_size, patch_size)
        if device.type == "cuda":
            patches = patches.contiguous(memory_format=torch.channels_last)
        feats = []
        for part in patches.split(patch_batch_size):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                feats.append(model.embed(part).float())
        out[done : done + chunk.shape[0]] = torch.cat(feats).view(chunk.shape[0], positions, -1).cpu()
        done += chunk.shape[0]
    model.train(was_training)
    return out


def gaussian_kernel(size: int, sigma: float | None = None) -> Tensor:
    """A ``(size, size)`` Gaussian over a patch's receptive field, sigma = size / 4 by default."""
    sigma = sigma or size / 4.0
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2.0
    line = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return torch.outer(line, line)


def upsample_scores(
    grid_scores: Tensor, *, image_size: int, patch_size: int, stride: int, sigma: float | None = None
) -> Tensor:
    """``(N, G, G)`` patch scores -> ``(N, S, S)`` pixel scores, each pixel a Gaussian-weighted mean of
    the scores of the patches that cover it; ``sigma`` in px (default a quarter of the patch), at least
    half the stride, so that a pixel between two patch centres still gets weight from both."""
    sigma = max(sigma or patch_size / 4.0, stride / 2.0)
    kernel = gaussian_kernel(patch_size, sigma).to(grid_scores.device)[None, None]
    scores = grid_scores.float()[:, None]
    weighted = F.conv_transpose2d(scores, kernel, stride=stride)
    coverage = F.conv_transpose2d(torch.ones_like(scores[:1]), kernel, stride=stride)
    maps = (weighted / coverage)[:, 0]
    missing = image_size - maps.shape[-1]
    if missing > 0:  # (S - P) not divisible by the stride: the last pixels take the nearest patch's score
        maps = F.pad(maps[:, None], (0, missing, 0, missing), mode="replicate")[:, 0]
    return maps
