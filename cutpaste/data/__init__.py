"""Data: the MVTec AD layout, image decoding, and a synthetic generator for tests and demos."""

from cutpaste.data.images import load_image, load_images, load_mask, load_masks
from cutpaste.data.layout import (
    MVTEC_OBJECTS,
    MVTEC_TEXTURES,
    MissingMaskWarning,
    Sample,
    category_kind,
    discover_categories,
    list_samples,
)

__all__ = [
    "MVTEC_OBJECTS",
    "MVTEC_TEXTURES",
    "MissingMaskWarning",
    "Sample",
    "category_kind",
    "discover_categories",
    "list_samples",
    "load_image",
    "load_images",
    "load_mask",
    "load_masks",
]
