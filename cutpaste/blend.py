"""Foreign-patch blending: a third kind of synthetic anomaly beside CutPaste and CutPaste-Scar.

NSA (Schlüter et al., ECCV 2022) and DRAEM (Zavrtanik et al., ICCV 2021) learn faster and score higher
than CutPaste by making anomalies that are harder to spot from their edges alone: content from
*another* image, in an irregular shape, blended into the target. Here, per sample and without a
Python loop over samples:

- the content is another image of the batch, shifted by up to half its size (reflecting at the
  border) and colour-jittered, so it is in-distribution texture at the wrong place;
- the shape is a CutPaste-sized rectangle (``area_ratio``, ``aspect_ratio``) cut by a Perlin-noise
  level set, so its outline is irregular, never empty;
- it is alpha-blended with an opacity drawn from ``opacity``, its edge softened by a 3x3 box filter
  (a cheap stand-in for Poisson blending: no hard seam to learn from).

The validation set's anomalies (:mod:`cutpaste.validation`) are foreign two-colour textures with
whole-image Perlin masks; these blend normal content inside a rectangle, so a configuration trained
on blends still meets a kind of anomaly on validation that it did not train on.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from cutpaste.augment import _check_images, color_jitter_batch, translate_batch
from cutpaste.noise import noise_batch

Range = tuple[float, float]
# Perlin lattice sizes for the shape of the blended region.
_SHAPE_CELLS = (2, 4, 8)
# Pixels of the rectangle whose noise is below this level are cut away (about a third of them).
_SHAPE_LEVEL = -0.2


def _other_index(batch: int, generator: torch.Generator) -> Tensor:
    """Per sample, the index of another sample of the batch (itself only when the batch has one)."""
    device = generator.device
    if batch < 2:
        return torch.zeros(batch, dtype=torch.long, device=device)
    offset = torch.randint(1, batch, (batch,), generator=generator, device=device)
    return (torch.arange(batch, device=device) + offset) % batch


def blend_masks(
    batch: int,
    height: int,
    width: int,
    *,
    area_ratio: Range,
    aspect_ratio: Range,
    generator: torch.Generator,
) -> Tensor:
    """``(batch, height, width)`` bool: a rectangle of area U(area_ratio) and aspect from (lo, 1) or (1, hi)
    at a uniform place, cut by a Perlin level set; a rectangle the cut would empty is kept whole."""
    device = generator.device
    u = torch.rand(batch, 5, generator=generator, device=device)
    area = (area_ratio[0] + (area_ratio[1] - area_ratio[0]) * u[:, 0]) * (height * width)
    lo, hi = aspect_ratio
    ratio = (torch.where(u[:, 1] < 0.5, math.log(lo), math.log(hi)) * u[:, 2]).exp()
    rows = (area * ratio).sqrt().round().clamp(1, height)
    cols = (area / ratio).sqrt().round().clamp(1, width)
    top = ((height - rows + 1) * u[:, 3]).floor().clamp_max(height - rows)
    left = ((width - cols + 1) * u[:, 4]).floor().clamp_max(width - cols)
    y = torch.arange(height, device=device, dtype=torch.float32)[None, :, None]
    x = torch.arange(width, device=device, dtype=torch.float32)[None, None, :]
    rect = (y >= top[:, None, None]) & (y < (top + rows)[:, None, None])
    rect = rect & (x >= left[:, None, None]) & (x < (left + cols)[:, None, None])
    noise = noise_batch(batch, max(height, width), generator, _SHAPE_CELLS)[:, :height, :width]
    shaped = rect & (noise > _SHAPE_LEVEL)
    empty = ~shaped.flatten(1).any(1)
    return torch.where(empty[:, None, None], rect, shaped)


def blend_batch(
    images: Tensor,
    *,
    generator: torch.Generator,
    area_ratio: Range = (0.02, 0.15),
    aspect_ratio: Range = (0.3, 3.3),
    opacity: Range = (0.5, 1.0),
    jitter: float = 0.1,
    return_masks: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Blends a shifted, jittered region of another image of the batch into each image.

    images ``(B, 3, H, W)`` float in [0, 1] -> new ``(B, 3, H, W)``, plus ``(B, 1, H, W)`` bool masks of
    every pixel that changed weight (the shape dilated by the soft edge) when ``return_masks``; pixels
    outside the mask are bit-identical to the input.
    """
    _check_images(images, generator)
    if not 0 <= opacity[0] <= opacity[1] <= 1:
        raise ValueError(f"opacity: expected 0 <= low <= high <= 1, got {opacity}")
    batch, _, height, width = images.shape
    source = translate_batch(
        images[_other_index(batch, generator)], max_shift=min(height, width) / 2, generator=generator
    )
    if jitter > 0:
        source = color_jitter_batch(
            source, brightness=jitter, contrast=jitter, saturation=jitter, hue=min(jitter, 0.5), generator=generator
        )
    shape = blend_masks(
        batch, height, width, area_ratio=area_ratio, aspect_ratio=aspect_ratio, generator=generator
    ).unsqueeze(1)
    beta = opacity[0] + (opacity[1] - opacity[0]) * torch.rand(
        batch, 1, 1, 1, generator=generator, device=images.device
    )
    alpha = F.avg_pool2d(shape.to(images.dtype), 3, stride=1, padding=1, count_include_pad=False) * beta
    mask = alpha > 0
    out = torch.where(mask, images * (1 - alpha) + source * alpha, images)
    return (out, mask) if return_masks else out
