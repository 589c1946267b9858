"""Patch geometry for the patch-level model: random training crops and the dense scoring grid.

Both are single gathers / views over the whole batch on its device, never a loop over samples or
positions: a 256 px image at stride 4 has 57 x 57 = 3249 patches of 32 px.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cutpaste.errors import ConfigError


def grid_size(image_size: int, patch_size: int, stride: int) -> int:
    """Patch positions per axis: ``(S - P) // stride + 1`` (57 for 256 px, 32 px patches, stride 4)."""
    if stride < 1:
        raise ConfigError(f"patch_stride: must be >= 1 px, got {stride}")
    if patch_size > image_size:
        raise ConfigError(f"patch_size: {patch_size} px is larger than the image ({image_size} px)")
    return (image_size - patch_size) // stride + 1


def random_crops(images: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """One random ``size`` x ``size`` crop per image of ``(B, C, H, W)``, offsets drawn from ``generator``."""
    batch, channels, height, width = images.shape
    if size > height or size > width:
        raise ConfigError(f"patch_size: {size} px is larger than the image ({height}x{width} px)")
    top = torch.randint(height - size + 1, (batch,), generator=generator, device=images.device)
    left = torch.randint(width - size + 1, (batch,), generator=generator, device=images.device)
    offsets = torch.arange(size, device=images.device)
    rows = (top[:, None] + offsets)[:, :, None]  # (B, P, 1)
    cols = (left[:, None] + offsets)[:, None, :]  # (B, 1, P)
    index = (rows * width + cols).view(batch, 1, -1).expand(batch, channels, -1)
    flat = images.reshape(batch, channels, height * width)
    return torch.gather(flat, 2, index).view(batch, channels, size, size)


def grid_patches(images: Tensor, size: int, stride: int) -> Tensor:
    """All patches of ``(B, C, H, W)`` on the grid: a view ``(B, G, G, C, P, P)`` (no copy)."""
    return images.unfold(2, size, stride).unfold(3, size, stride).permute(0, 2, 3, 1, 4, 5)
