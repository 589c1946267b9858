"""The anomalies validation *chooses* on: small smooth blobs that are dented, smudged, stained or speckled.

Each shares nothing with what training makes (:mod:`cutpaste.augment.ops`) or with DRAEM-style Perlin views:

- shape: a star-shaped blob (a circle whose radius varies with a few low harmonics of the angle), not
  CutPaste's rectangle, the scar's thin rotated bar, nor a Perlin level set;
- area: 0.8-2 % of the image, below CutPaste's 2-15 % and above the largest scar
  (16 x 25 px of 256 x 256, 0.6 %);
- generator: none of Perlin noise, pasted image content or the views' colour jitter. The content is the
  image's own pixels, bent (``dent``), blurred (``smudge``), tinted (``stain``) or roughened (``speckle``).

So a configuration cannot win validation by recognising its own training task, and (as
``bench/decide.py`` reports per kind) global colour statistics do not saturate them. All batched and
seeded by the generator, on its device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# The blobs' area as a fraction of the image: between the scar's largest and CutPaste's smallest.
BLOB_AREA = (0.008, 0.02)
_HARMONICS = (2, 3, 4)


def blob_masks(
    batch: int, size: int, generator: torch.Generator, area: tuple[float, float] = BLOB_AREA
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(B, S, S)`` bool masks, their centres ``(B, 2)`` (x, y in px) and base radii ``(B,)`` in px.

    The radius at angle t is ``r0 * (1 + sum_k a_k cos(k t + phi_k))`` with ``a_k`` up to ``0.3 / k``, so
    the blob stays star-shaped around its centre (which is always inside: the mask is never empty)."""
    device = generator.device
    lo, hi = area
    fraction = lo + (hi - lo) * torch.rand(batch, generator=generator, device=device)
    r0 = (fraction * size * size / math.pi).sqrt()
    centre = (0.15 + 0.7 * torch.rand(batch, 2, generator=generator, device=device)) * size
    k = torch.tensor(_HARMONICS, device=device, dtype=torch.float32)
    amplitude = torch.rand(batch, len(_HARMONICS), generator=generator, device=device) * 0.3 / k
    phase = torch.rand(batch, len(_HARMONICS), generator=generator, device=device) * (2 * math.pi)
    axis = torch.arange(size, device=device, dtype=torch.float32) + 0.5
    dy = axis.view(1, size, 1) - centre[:, 1].view(batch, 1, 1)
    dx = axis.view(1, 1, size) - centre[:, 0].view(batch, 1, 1)
    angle = torch.atan2(dy, dx)[..., None]  # (B, S, S, 1)
    wobble = (amplitude[:, None, None] * torch.cos(k * angle + phase[:, None, None])).sum(-1)
    radius = r0.view(batch, 1, 1) * (1 + wobble)
    masks = dx.square() + dy.square() <= radius.square()
    # A blob smaller than a pixel still marks the pixel under its centre.
    cy, cx = centre[:, 1].long().clamp(0, size - 1), centre[:, 0].long().clamp(0, size - 1)
    masks[torch.arange(batch, device=device), cy, cx] = True
    return masks, centre, r0


def _soft(masks: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, S, S)`` bool -> ``(B, 1, S, S)`` weights in [0, 1] whose edge fades over a few px."""
    k = max(3, size // 42) | 1
    return F.avg_pool2d(masks[:, None].float(), k, stride=1, padding=k // 2, count_include_pad=False)


def _square(images: torch.Tensor) -> int:
    h, w = images.shape[-2:]
    if h != w:
        raise ValueError(f"blob anomalies expect square images, got {h}x{w}")
    return h


def dent_anomalies(images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The blob's content pinched towards or bulged away from its centre, and twisted: a dent, a bump,
    a bend. ``(B, 3, S, S)`` uint8 -> (uint8 images, ``(B, S, S)`` bool masks)."""
    size, device = _square(images), generator.device
    b = images.shape[0]
    masks, centre, r0 = blob_masks(b, size, generator)
    reach = 1.6 * r0.view(b, 1, 1)  # the bend fades out just past the blob's edge
    axis = torch.arange(size, device=device, dtype=torch.float32) + 0.5
    dy = axis.view(1, size, 1) - centre[:, 1].view(b, 1, 1)
    dx = axis.view(1, 1, size) - centre[:, 0].view(b, 1, 1)
    bump = (1 - (dx.square() + dy.square()) / reach.square()).clamp_min(0).square()  # (B, S, S)
    sign = torch.where(torch.rand(b, 1, 1, generator=generator, device=device) < 0.5, -1.0, 1.0)
    pinch = sign * (0.35 + 0.3 * torch.rand(b, 1, 1, generator=generator, device=device))
    twist = (torch.rand(b, 1, 1, generator=generator, device=device) - 0.5) * 1.2  # radians at the centre
    angle = twist * bump
    scale = 1 + pinch * bump
    sx = (dx * torch.cos(angle) - dy * torch.sin(angle)) * scale
    sy = (dx * torch.sin(angle) + dy * torch.cos(angle)) * scale
    grid = torch.stack([sx + centre[:, 0].view(b, 1, 1), sy + centre[:, 1].view(b, 1, 1)], dim=-1) / size * 2 - 1
    x = images.to(device).float()
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8), masks | (bump > 0.05)


def smudge_anomalies(images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The blob's detail replaced by a heavy blur of the image: a smear, a part gone soft.
    ``(B, 3, S, S)`` uint8 -> (uint8 images, ``(B, S, S)`` bool masks)."""
    size = _square(images)
    masks, _, _ = blob_masks(images.shape[0], size, generator)
    weight = _soft(masks, size)
    x = images.to(generator.device).float()
    k = max(3, size // 10) | 1
    blurred = F.avg_pool2d(
        F.avg_pool2d(x, k, 1, k // 2, count_include_pad=False), k, 1, k // 2, count_include_pad=False
    )
    out = x * (1 - weight) + blurred * weight
    return out.round().clamp(0, 255).to(torch.uint8), masks


def stain_anomalies(images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The blob darkened or lightened by 20-40 %, with a colour cast: a stain, a burn, a discolouration.
    ``(B, 3, S, S)`` uint8 -> (uint8 images, ``(B, S, S)`` bool masks)."""
    size, device = _square(images), generator.device
    b = images.shape[0]
    masks, _, _ = blob_masks(b, size, generator)
    weight = _soft(masks, size)
    strength = 0.2 + 0.2 * torch.rand(b, 1, 1, 1, generator=generator, device=device)
    darker = torch.rand(b, 1, 1, 1, generator=generator, device=device) < 0.6
    cast = 1 + 0.3 * (torch.rand(b, 3, 1, 1, generator=generator, device=device) - 0.5)
    x = images.to(device).float()
    target = torch.where(darker, x * (1 - strength) * cast, x + (255 - x) * strength * cast)
    out = x * (1 - weight) + target * weight
    return out.round().clamp(0, 255).to(torch.uint8), masks


def speckle_anomalies(images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Grainy noise of 15-35 grey levels inside the blob, in grains of 1/64 of the image (2 px at 128, so a
    64 px detector still sees one-pixel grains): dust, contamination, pitting.
    ``(B, 3, S, S)`` uint8 -> (uint8 images, ``(B, S, S)`` bool masks)."""
    size, device = _square(images), generator.device
    b = images.shape[0]
    masks, _, _ = blob_masks(b, size, generator)
    weight = _soft(masks, size)
    grain = max(1, round(size / 64))
    noise = torch.randn(b, 1, size // grain + 1, size // grain + 1, generator=generator, device=device)
    noise = F.interpolate(noise, scale_factor=grain, mode="nearest")[..., :size, :size]
    sigma = 15 + 20 * torch.rand(b, 1, 1, 1, generator=generator, device=device)
    x = images.to(device).float()
    out = x + noise * sigma * weight
    return out.round().clamp(0, 255).to(torch.uint8), masks
