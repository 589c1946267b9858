"""Structural synthetic anomalies for validation: a region warped, a region's detail erased, a thin stroke.

The validation set's Perlin-texture anomalies (:func:`cutpaste.synthetic_anomalies.perlin_anomalies`) change
colour: global colour statistics alone rank them at 0.96 AUROC on MVTec transistor, better than a
trained detector, while real defects are mostly structural (a bent lead, a crack, a missing part).
These two kinds keep the colours and change the structure, so a validation AUROC rewards what the
test split rewards. On a texture a warp or a blur of the texture is often more of the same texture,
so a thin stroke (a crack, a scratch, a cut, a stray thread: the commonest texture defects) is the
third kind. None is what training sees (CutPaste and blend paste rectangles of image
content), so no configuration wins by recognising its own augmentation. Batched, seeded by the
generator, on its device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cutpaste.noise import noise_batch, perlin_masks

_AREA = (0.02, 0.15)


def _soft(masks: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, S, S)`` bool -> ``(B, 1, S, S)`` float weights with an edge a few px wide."""
    k = max(3, size // 32) | 1
    return F.avg_pool2d(masks[:, None].float(), k, stride=1, padding=k // 2, count_include_pad=False)


def distortion_anomalies(
    images: torch.Tensor, generator: torch.Generator, *, amplitude: tuple[float, float] = (0.03, 0.06)
) -> tuple[torch.Tensor, torch.Tensor]:
    """A Perlin region warped by a smooth random displacement of ``amplitude`` x the image size
    (about 4-8 px at 128 px). ``(B, 3, S, S)`` uint8 -> (uint8 images, ``(B, S, S)`` bool masks)."""
    b, _, size, _ = images.shape
    device = generator.device
    masks = perlin_masks(b, size, generator, _AREA)
    weight = _soft(masks, size)  # (B, 1, S, S)
    field = torch.stack([noise_batch(b, size, generator, (4, 8)) for _ in range(2)], dim=-1)  # (B, S, S, 2)
    lo, hi = amplitude
    scale = (lo + (hi - lo) * torch.rand(b, 1, 1, 1, generator=generator, device=device)) * 2.0
    axis = torch.linspace(-1, 1, size, device=device)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), dim=-1)[None]  # (1, S, S, 2): x, y
    grid = grid + field * scale * weight[:, 0, :, :, None]
    x = images.to(device).float()
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)
    return out.round().clamp(0, 255).to(torch.uint8), masks


def erasure_anomalies(images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A Perlin region's detail replaced by a heavy blur of the image (a smudge, a part gone soft).
    ``(B, 3, S, S)`` uint8 -> (uint8 images, ``(B, S, S)`` bool masks)."""
    b, _, size, _ = images.shape
    masks = perlin_masks(b, size, generator, _AREA)
    weight = _soft(masks, size)
    x = images.to(generator.device).float()
    k = max(3, size // 8) | 1
    blurred = F.avg_pool2d(
        F.avg_pool2d(x, k, 1, k // 2, count_include_pad=False), k, 1, k // 2, count_include_pad=False
    )
    out = x * (1 - weight) + blurred * weight
    return out.round().clamp(0, 255).to(torch.uint8), masks


def stroke_anomalies(
    images: torch.Tensor, generator: torch.Generator, *, width: tuple[float, float] = (0.8, 2.0)
) -> tuple[torch.Tensor, torch.Tensor]:
    """A thin curved stroke, darker or lighter than what it crosses: the level line of a smooth Perlin
    field through the middle of a Perlin region, ``width`` px either side of it (at 128 px, scaled).
    ``(B, 3, S, S)`` uint8 -> (uint8 images, ``(B, S, S)`` bool masks, never empty)."""
    b, _, size, _ = images.shape
    device = generator.device
    region = perlin_masks(b, size, generator, (0.04, 0.12), cells=(2, 3))
    field = noise_batch(b, size, generator, (2, 3))
    # The field's median inside the region: its level line there crosses the region.
    level = torch.nanquantile(field.masked_fill(~region, float("nan")).flatten(1), 0.5, dim=1).view(b, 1, 1)
    gy, gx = torch.gradient(field, dim=(1, 2))
    distance = (field - level).abs() / (gx.square() + gy.square()).sqrt().clamp_min(1e-6)  # px from the line
    lo, hi = width
    half = (lo + (hi - lo) * torch.rand(b, 1, 1, generator=generator, device=device)) * size / 128
    # Full strength within ``half`` px of the line, fading to nothing over one more px (anti-aliased);
    # the mask is every pixel the stroke touches.
    weight = (half + 1 - distance).clamp(0, 1) * region
    # A region whose line misses the pixel grid still gets its nearest pixel to the line.
    nearest = distance.masked_fill(~region, float("inf")).flatten(1).argmin(1)
    weight.view(b, -1)[torch.arange(b, device=device), nearest] = 1.0
    masks = weight > 0
    weight = weight[:, None]
    dark = torch.rand(b, 1, 1, 1, generator=generator, device=device) < 0.7
    strength = 0.5 + 0.4 * torch.rand(b, 1, 1, 1, generator=generator, device=device)
    x = images.to(device).float()
    target = torch.where(dark, x * (1 - strength), x + (255 - x) * strength)
    out = x * (1 - weight) + target * weight
    return out.round().clamp(0, 255).to(torch.uint8), masks
