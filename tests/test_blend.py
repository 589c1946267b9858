"""The blend anomaly (another image's content in a Perlin-cut region): batched, seeded, exact masks."""

from __future__ import annotations

import pytest
import torch

from cutpaste.blend import blend_batch, blend_masks


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(batch: int = 6, size: int = 64) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=gen(123))


def test_masks_are_exact_and_the_rest_is_untouched():
    x = images()
    before = x.clone()
    out, masks = blend_batch(x, generator=gen(), return_masks=True)
    assert torch.equal(x, before), "the input is not modified"
    assert masks.shape == (6, 1, 64, 64) and masks.dtype == torch.bool
    assert torch.equal(out[~masks.expand_as(out)], x[~masks.expand_as(x)]), "outside the mask nothing changes"
    changed = (out != x).any(1, keepdim=True)
    assert (changed & ~masks).sum() == 0
    assert (changed.flatten(1).sum(1) > 0).all(), "every sample gets an anomaly"
    assert out.min() >= 0 and out.max() <= 1


def test_region_sizes_follow_the_area_ratio():
    shapes = blend_masks(64, 64, 64, area_ratio=(0.05, 0.1), aspect_ratio=(0.5, 2.0), generator=gen())
    area = shapes.flatten(1).float().mean(1)
    assert (area > 0).all() and (area <= 0.1 * 1.1).all()
    # The Perlin cut makes irregular regions: most are not full rectangles.
    rows, cols = shapes.any(2).sum(1), shapes.any(1).sum(1)
    assert ((rows * cols) > shapes.flatten(1).sum(1)).float().mean() > 0.5


def test_content_comes_from_another_image():
    x = torch.stack([torch.full((3, 32, 32), v) for v in (0.0, 0.25, 0.5, 0.75)])
    out, masks = blend_batch(x, generator=gen(), opacity=(1.0, 1.0), jitter=0.0, return_masks=True)
    for i in range(4):
        core = out[i, 0][masks[i, 0]]
        assert (core != x[i, 0, 0, 0]).any(), "the blended region holds another image's value"


def test_deterministic_under_a_seed_and_seed_dependent():
    x = images()
    a = blend_batch(x, generator=gen(5))
    b = blend_batch(x, generator=gen(5))
    c = blend_batch(x, generator=gen(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_rejects_bad_opacity_and_shapes():
    with pytest.raises(ValueError, match="opacity"):
        blend_batch(images(), generator=gen(), opacity=(0.9, 0.1))
    with pytest.raises(ValueError):
        blend_batch(torch.rand(2, 1, 16, 16), generator=gen())
