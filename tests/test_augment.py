"""Batched CutPaste augmentations: geometry, colour jitter against torchvision, determinism, views."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF

import cutpaste.augment.colour as col
import cutpaste.augment.ops as aug
from cutpaste.augment.colour import color_jitter_batch
from cutpaste.augment.ops import cutpaste_batch, scar_batch, translate_batch
from cutpaste.augment.views import make_views
from cutpaste.config import VARIANTS, AugmentConfig


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These batches are small: one thread avoids OpenMP stalls when other processes share the CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def noise_images(batch: int = 4, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Non-constant images in [0, 1]: every pixel differs from its neighbours."""
    return torch.rand(batch, 3, size, size, generator=gen(1000 + seed))


def smooth_images(batch: int = 4, size: int = 64) -> torch.Tensor:
    """Colourful gradients with a few exactly grey pixels (ties in the HSV conversion)."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    base = torch.stack([xx, yy, 1 - xx * yy])
    out = torch.stack([base.roll(i, dims=0) * (0.5 + 0.5 * i / batch) for i in range(batch)])
    out[:, :, :2, :2] = 0.5
    return out


PUBLIC = {
    "cutpaste": lambda x, g: cutpaste_batch(x, generator=g),
    "scar": lambda x, g: scar_batch(x, generator=g),
    "jitter": lambda x, g: color_jitter_batch(x, brightness=0.3, contrast=0.3, saturation=0.3, hue=0.2, generator=g),
    "translate": lambda x, g: translate_batch(x, max_shift=5, generator=g),
}


# --------------------------------------------------------------------------- shapes, ranges, determinism


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_shape_dtype_range_and_input_untouched(name):
    x = noise_images(3, 48)
    before = x.clone()
    out = PUBLIC[name](x, gen())
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(x, before), "the input batch must not be modified"


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_deterministic_under_seed(name):
    x = noise_images(4, 48)
    assert torch.equal(PUBLIC[name](x, gen(7)), PUBLIC[name](x, gen(7)))
    assert not torch.equal(PUBLIC[name](x, gen(7)), PUBLIC[name](x, gen(8)))


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_channels_last_input_gives_the_same_result(name):
    x = noise_images(3, 40)
    channels_last = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(PUBLIC[name](x, gen(3)), PUBLIC[name](channels_last, gen(3)))


@pytest.mark.parametrize("batch", [1, 64])
def test_batch_sizes(batch):
    x = noise_images(batch, 32)
    views, labels = make_views(x, variant="3way", config=AugmentConfig(), generator=gen())
    assert views.shape == (3 * batch, 3, 32, 32) and labels.shape == (3 * batch,)


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="B, 3, H, W"):
        cutpaste_batch(torch.rand(2, 1, 32, 32), generator=gen())
    with pytest.raises(ValueError, match="float"):
        cutpaste_batch(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), generator=gen())


# --------------------------------------------------------------------------- CutPaste geometry


def test_cutpaste_masks_area_rectangle_and_unchanged_outside():
    x = noise_images(32, 128)
    out, masks = cutpaste_batch(x, generator=gen(), return_masks=True)
    assert masks.shape == (32, 1, 128, 128) and masks.dtype == torch.bool
    area = masks.flatten(1).sum(1).float()
    fraction = area / (128 * 128)
    assert fraction.min() >= 0.02 * 0.85 and fraction.max() <= 0.15 * 1.15
    assert len(set(area.tolist())) > 20, "each sample draws its own patch size"
    for mask in masks[:, 0]:  # the pasted region is a filled axis-aligned rectangle
        rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert box == mask.sum()
    changed = (out != x).any(1, keepdim=True)
    assert not changed[~masks].any(), "pixels outside the patch must be untouched"
    assert changed[masks].float().mean() > 0.95, "a jittered patch from elsewhere changes the pixels"


def test_cutpaste_aspect_ratio_both_orientations():
    _, masks = cutpaste_batch(noise_images(64, 128), generator=gen(), return_masks=True)
    m = masks[:, 0]
    height = m.any(2).sum(1).float()
    width = m.any(1).sum(1).float()
    ratio = height / width
    assert (ratio < 0.8).any() and (ratio > 1.25).any()
    assert ratio.min() >= 0.3 * 0.8 and ratio.max() <= 3.3 * 1.25


def test_cutpaste_without_jitter_copies_a_rectangle_of_the_same_image():
    x = noise_images(6, 64)
    out, masks = cutpaste_batch(x, generator=gen(), jitter=0.0, return_masks=True)
    for b in range(6):
        rows = masks[b, 0].any(1).nonzero()[:, 0]
        cols = masks[b, 0].any(0).nonzero()[:, 0]
        patch = out[b, :, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        h, w = patch.shape[1:]
        windows = x[b].unfold(1, h, 1).unfold(2, w, 1)  # (3, H-h+1, W-w+1, h, w)
        hits = (windows == patch[:, None, None]).all(-1).all(-1).all(0)
        assert hits.any(), "the pasted pixels must be an exact rectangle of the source image"


def test_paste_geometry_exact_for_known_patches():
    x = noise_images(2, 32)
    no_jitter = col.Jitter(torch.ones(2, 4), torch.arange(4).repeat(2, 1), (False,) * 4)
    t = torch.tensor
    # Sample 0: 6 x 4 rectangle, angle 0. Sample 1: the same rectangle rotated by 180 degrees.
    patch = aug._Patch(
        size=t([[6.0, 4.0], [6.0, 4.0]]),
        source=t([[3, 5], [10, 20]]),
        centre=t([[20.0, 9.0], [8.0, 14.0]]),
        rotation=t([[1.0, 0.0], [math.cos(math.pi), math.sin(math.pi)]]),
        box=t([[16, 6, 8, 6], [4, 11, 8, 6]]),
        canvas=48,
        box_is_patch=False,
    )
    out = x.clone()
    masks = aug._paste(x, out, patch, no_jitter, masks=True)
    assert masks.flatten(1).sum(1).tolist() == [24, 24]
    assert torch.equal(out[0, :, 17:23, 7:11], x[0, :, 3:9, 5:9])
    assert torch.equal(out[1, :, 5:11, 12:16], x[1, :, 10:16, 20:24].flip(1, 2))
    assert torch.equal(out[~masks.expand_as(out)], x[~masks.expand_as(x)])


def test_cutpaste_patch_contrast_uses_the_patch_mean_despite_padding():
    x = smooth_images(2, 32)
    t = torch.tensor
    # A 5 x 7 patch on a canvas of 60 entries: 25 padding entries repeat entry 0.
    patch = aug._Patch(
        size=t([[5.0, 7.0], [5.0, 7.0]]),
        source=t([[2, 3], [20, 1]]),
        centre=t([[12.5, 23.5], [3.5, 10.5]]),
        rotation=t([[1.0, 0.0], [1.0, 0.0]]),
        box=t([[10, 20, 5, 7], [1, 7, 5, 7]]),
        canvas=60,
        box_is_patch=True,
    )
    factors = t([[1.0, 0.4, 1.0, 0.0], [1.0, 1.7, 1.0, 0.0]])
    contrast_only = col.Jitter(factors, t([[1, 0, 2, 3]] * 2), (False, True, False, False))
    out = x.clone()
    masks = aug._paste(x, out, patch, contrast_only, masks=True)
    assert masks.flatten(1).sum(1).tolist() == [35, 35]
    expected0 = TF.adjust_contrast(x[0, :, 2:7, 3:10], 0.4)
    expected1 = TF.adjust_contrast(x[1, :, 20:25, 1:8], 1.7)
    torch.testing.assert_close(out[0, :, 10:15, 20:27], expected0, atol=3e-6, rtol=0)
    torch.testing.assert_close(out[1, :, 1:6, 7:14], expected1, atol=3e-6, rtol=0)


# --------------------------------------------------------------------------- scar geometry


def test_scar_masks_thin_and_sized_with_the_image():
    for size, batch in ((128, 40), (256, 24)):
        scale = size / 256
        x = noise_images(batch, size)
        out, masks = scar_batch(x, generator=gen(), return_masks=True)
        area = masks.flatten(1).sum(1).float()
        # width U[2, 16] x length U[10, 25] px at 256 px: mean area 9 * 17.5 = 157.5 px, scaled by scale^2.
        assert area.min() > 0
        assert area.max() <= 16 * 25 * scale**2 * 1.3
        assert abs(area.mean().item() / (157.5 * scale**2) - 1) < 0.25
        # Thin: the mask fits in a box no larger than the rotated rectangle's.
        m = masks[:, 0]
        extent = torch.maximum(m.any(2).sum(1), m.any(1).sum(1))
        assert extent.max() <= math.ceil(math.hypot(16, 25) * scale) + 2
        changed = (out != x).any(1, keepdim=True)
        assert not changed[~masks].any()
        assert changed[masks].float().mean() > 0.9


def test_scar_rotation_varies_per_sample():
    _, masks = scar_batch(
        noise_images(32, 256), generator=gen(), width=(4.0, 4.0), length=(24.0, 24.0), return_masks=True
    )
    m = masks[:, 0]
    height, width = m.any(2).sum(1), m.any(1).sum(1)
    assert len(set(zip(height.tolist(), width.tolist(), strict=True))) > 8
    _, straight = scar_batch(
        noise_images(8, 256), generator=gen(), width=(4.0, 4.0), length=(24.0, 24.0), rotation=0.0, return_masks=True
    )
    assert straight.flatten(1).sum(1).tolist() == [96] * 8


# --------------------------------------------------------------------------- colour jitter


def test_zero_jitter_is_identity():
    x = smooth_images()
    out = color_jitter_batch(x, brightness=0, contrast=0, saturation=0, hue=0, generator=gen())
    assert torch.equal(out, x)
    params = col.draw_jitter(4, (0.0, 0.0, 0.0, 0.0), gen(), x)
    assert torch.equal(col.apply_jitter(x.clone().flatten(2), params).view_as(x), x)


@pytest.mark.parametrize("shift", [0.5, 0.1, -0.3])
def test_hue_round_trip(shift):
    x = smooth_images().flatten(2)
    s = torch.full((x.shape[0],), shift)
    back = col._adjust_hue(col._adjust_hue(x, s), -s)
    torch.testing.assert_close(back, x, atol=2e-6, rtol=0)
    twice = col._adjust_hue(col._adjust_hue(x, torch.full_like(s, 0.5)), torch.full_like(s, 0.5))
    torch.testing.assert_close(twice, x, atol=2e-6, rtol=0)
    grey = torch.full((2, 3, 5), 0.25)
    assert torch.equal(col._adjust_hue(grey, s[:2]), grey)


OPS = {0: TF.adjust_brightness, 1: TF.adjust_contrast, 2: TF.adjust_saturation, 3: TF.adjust_hue}


@pytest.mark.parametrize("op", [0, 1, 2, 3])
def test_single_op_matches_torchvision(op):
    x = smooth_images(6)
    factors = torch.tensor([[1.3, 0.6, 1.5, 0.0]]).repeat(6, 1)
    factors[:, op] = torch.linspace(0.5, 1.5, 6) if op < 3 else torch.linspace(-0.5, 0.5, 6)
    order = torch.tensor([op] + [k for k in range(4) if k != op]).repeat(6, 1)
    enabled = tuple(k == op for k in range(4))
    got = col.apply_jitter(x.clone().flatten(2), col.Jitter(factors, order, enabled)).view_as(x)
    expected = torch.stack([OPS[op](x[i], factors[i, op].item()) for i in range(6)])
    torch.testing.assert_close(got, expected, atol=3e-6, rtol=0)


def test_random_order_matches_torchvision_sequence():
    x = smooth_images(8)
    params = col.draw_jitter(8, (0.4, 0.4, 0.4, 0.3), gen(), x)
    assert len({tuple(o) for o in params.order.tolist()}) > 1, "each sample draws its own order"
    got = col.apply_jitter(x.clone().flatten(2), params).view_as(x)
    expected = []
    for i in range(8):
        y = x[i]
        for k in params.order[i].tolist():
            y = OPS[k](y, params.factors[i, k].item())
        expected.append(y)
    torch.testing.assert_close(got, torch.stack(expected), atol=1e-5, rtol=0)


def test_accelerator_path_matches_cpu_path(monkeypatch):
    """The where-based selection used on GPUs gives the CPU (indexing, chunked) result."""
    x = noise_images(6, 96)
    params = col.draw_jitter(6, (0.4, 0.4, 0.4, 0.3), gen(), x)
    weight = (torch.rand(6, 96 * 96, generator=gen(2)) < 0.7).float()
    cpu = col.apply_jitter(x.clone().flatten(2), params, weight)
    views = {v: make_views(x, variant=v, config=AugmentConfig(), generator=gen())[0] for v in ("3way", "union")}
    monkeypatch.setattr(col, "runs_on_cpu", lambda t: False)
    monkeypatch.setattr(aug, "runs_on_cpu", lambda t: False)
    other = col.apply_jitter(x.clone().flatten(2), params, weight)
    torch.testing.assert_close(other, cpu, atol=1e-6, rtol=0)
    for variant, expected in views.items():
        got, _ = make_views(x, variant=variant, config=AugmentConfig(), generator=gen())
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_patch_contrast_uses_the_patch_mean():
    x = noise_images(2, 16).flatten(2)
    weight = torch.zeros(2, 256)
    weight[:, :40] = 1
    params = col.Jitter(
        torch.tensor([[1.0, 0.5, 1.0, 0.0]] * 2), torch.tensor([[1, 0, 2, 3]] * 2), (False, True, False, False)
    )
    got = col.apply_jitter(x.clone(), params, weight)
    expected = TF.adjust_contrast(x[:, :, :40].reshape(2, 3, 5, 8), 0.5).reshape(2, 3, 40)
    torch.testing.assert_close(got[:, :, :40], expected, atol=3e-6, rtol=0)


def test_color_jitter_factors_differ_per_sample():
    x = smooth_images(1).expand(8, -1, -1, -1)
    out = color_jitter_batch(x, brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1, generator=gen())
    assert len({round(v, 5) for v in out.mean((1, 2, 3)).tolist()}) == 8
    with pytest.raises(ValueError):
        color_jitter_batch(x, brightness=0, contrast=0, saturation=0, hue=0.7, generator=gen())


# --------------------------------------------------------------------------- translation


def test_translate_is_a_reflected_shift_per_sample():
    x = noise_images(16, 12)
    out = translate_batch(x, max_shift=2, generator=gen())
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    shifts = []
    for b in range(16):
        found = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(out[b], padded[b, :, 2 - dy : 2 - dy + 12, 2 - dx : 2 - dx + 12])
        ]
        assert len(found) == 1
        shifts.append(found[0])
    assert len(set(shifts)) > 4
    assert torch.equal(translate_batch(x, max_shift=0.5, generator=gen()), x)


# --------------------------------------------------------------------------- training views

NO_PRE = AugmentConfig(pre_translate=0.0, pre_jitter=0.0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_make_views_labels_and_order(variant):
    batch, size = 12, 128
    x = noise_images(batch, size)
    views, labels = make_views(x, variant=variant, config=NO_PRE, generator=gen())
    kinds = 3 if variant == "3way" else 2
    assert views.shape == (kinds * batch, 3, size, size) and views.dtype == x.dtype
    assert labels.dtype == torch.int64
    assert labels.tolist() == [k for k in range(kinds) for _ in range(batch)]
    assert torch.equal(views[:batch], x), "without pre-augmentation the first block is the input"
    changed = [(views[k * batch : (k + 1) * batch] != x).any(1).flatten(1).sum(1) for k in range(1, kinds)]
    scar_max = 16 * 25 * (size / 256) ** 2 * 1.3
    cutpaste_min = 0.02 * size * size * 0.85
    if variant in ("normal", "3way"):
        assert (changed[0] >= cutpaste_min).all()
    if variant == "scar":
        assert (changed[0] <= scar_max).all() and (changed[0] > 0).all()
    if variant == "3way":
        assert (changed[1] <= scar_max).all() and (changed[1] > 0).all()
    if variant == "union":
        union = changed[0]
        assert ((union <= scar_max) | (union >= cutpaste_min)).all()
    views2, _ = make_views(x, variant=variant, config=NO_PRE, generator=gen())
    assert torch.equal(views, views2)


def test_union_mixes_both_kinds():
    x = noise_images(32, 128)
    views, _ = make_views(x, variant="union", config=NO_PRE, generator=gen())
    changed = (views[32:] != x).any(1).flatten(1).sum(1)
    assert (changed < 200).sum() >= 5 and (changed > 300).sum() >= 5


def test_make_views_pre_augmentation_changes_every_view():
    x = smooth_images(4, 64)
    views, _ = make_views(x, variant="normal", config=AugmentConfig(), generator=gen())
    assert views.min() >= 0 and views.max() <= 1
    assert not torch.equal(views[:4], x)
    assert (views[:4] != views[4:]).any(1).flatten(1).sum(1).min() > 0
    other, _ = make_views(x, variant="normal", config=AugmentConfig(), generator=gen(1))
    assert not torch.equal(views, other)


def test_deterministic_algorithms_mode_gives_the_same_views():
    x = noise_images(4, 64)
    expected, _ = make_views(x, variant="union", config=AugmentConfig(), generator=gen())
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        got, _ = make_views(x, variant="union", config=AugmentConfig(), generator=gen())
    finally:
        torch.use_deterministic_algorithms(before)
    assert torch.equal(got, expected)


def test_unknown_variant_is_named_in_the_error():
    with pytest.raises(ValueError, match="'bogus'"):
        make_views(noise_images(2, 32), variant="bogus", config=AugmentConfig(), generator=gen())
