"""One training step's views: pre-augmented images, then their CutPaste and Scar versions.

Above :mod:`cutpaste.augment.ops` and :mod:`cutpaste.augment.colour` (the batched geometry and jitter),
which stay free of the variants' logic.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cutpaste.augment import ops as augment
from cutpaste.augment.colour import apply_jitter, draw_jitter
from cutpaste.config import VARIANTS, AugmentConfig


def make_views(
    images: Tensor,
    *,
    variant: str,
    config: AugmentConfig,
    generator: torch.Generator,
    pixel_scale: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Training views for one step: pre-augmented images first, then their CutPaste versions.

    images: ``(B, 3, H, W)`` float in [0, 1]. Returns views ``(B * K, 3, H, W)`` in [0, 1] and labels
    ``(B * K,)`` int64, in blocks of B: ``normal`` and ``scar`` give ``[x, aug(x)]`` labelled 0, 1;
    ``3way`` gives ``[x, cutpaste(x), scar(x)]`` labelled 0, 1, 2; ``union`` gives ``[x, u(x)]``
    labelled 0, 1 where each sample of ``u`` is CutPaste or scar with probability 1/2.
    ``pixel_scale`` converts the 256 px sizes (translation, scar) to these images; default H / 256.
    Crops of a larger image pass the full image's scale, so a scar keeps its size on the object.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown CutPaste variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    augment.check_images(images, generator)
    batch, channels, height, width = images.shape
    kinds = 3 if variant == "3way" else 2
    views = torch.empty((kinds * batch, channels, height, width), dtype=images.dtype, device=images.device)
    # Pre-augmentation, written straight into the first block: translation by up to pre_translate px
    # (at 256 px), then colour jitter of the whole image.
    x = views[:batch]
    scale = height / augment.REFERENCE_SIZE if pixel_scale is None else pixel_scale
    augment.translate_batch(images, max_shift=config.pre_translate * scale, generator=generator, out=x)
    apply_jitter(x.view(batch, channels, -1), draw_jitter(batch, (config.pre_jitter,) * 4, generator, x))
    for k in range(1, kinds):
        views[k * batch : (k + 1) * batch] = x
    patches = []
    if variant in ("normal", "3way", "union"):
        patches.append(augment._cutpaste_geometry(x, config.area_ratio, config.aspect_ratio, generator))
    if variant in ("scar", "3way", "union"):
        patches.append(
            augment._scar_geometry(x, config.scar_width, config.scar_length, config.scar_rotation, generator, scale)
        )
    if variant == "union":  # each sample keeps its CutPaste or its scar with probability 1/2
        patches = [augment._select(augment.uniform(generator, x, batch) < 0.5, *patches)]
    for k, patch in enumerate(patches, start=1):
        params = draw_jitter(batch, (config.patch_jitter,) * 4, generator, x)
        augment._paste(x, views[k * batch : (k + 1) * batch], patch, params)
    return views, torch.arange(kinds, device=x.device).repeat_interleave(batch)
