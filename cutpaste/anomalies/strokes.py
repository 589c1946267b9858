"""A thin stroke for validation: a crack, a scratch, a cut, a stray thread (the commonest texture defects).

Thin and elongated like the scar the encoder trains on (:mod:`cutpaste.augment.ops`), so it is reported but
does not vote (:data:`cutpaste.anomalies.kinds.REPORTED_KINDS`). Batched, seeded by the generator, on
its device.
"""

from __future__ import annotations

import torch

from cutpaste.anomalies.noise import noise_batch, perlin_masks


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
