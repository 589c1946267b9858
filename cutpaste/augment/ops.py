"""CutPaste augmentations for whole batches on the training device (Li et al., CVPR 2021, Sec. 3).

Every function takes float images ``(B, 3, H, W)`` in [0, 1] on any device and a ``torch.Generator``
on that device. Each sample draws its own parameters as tensors from that generator only (a seeded
generator reproduces a batch, bitwise on CPU); no Python loop runs over samples, only over the four
colour-jitter stages and, on CPU, over cache-sized pixel chunks. A patch is pasted by enumerating the
pixels of each sample's target bounding box (a "canvas"), rotating each back into the source rectangle,
gathering and colour-jittering only those pixels and writing them back: plain CutPaste is the
rotation-0 case of the scar, and the jitter touches at most ``area_ratio[1]`` of the image. Pixel sizes
(scar width/length, translation) are given for a 256 px image, as in the paper, and scaled by H / 256.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from cutpaste.augment.colour import Jitter, apply_jitter, check_images, draw_jitter, runs_on_cpu, uniform

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
REFERENCE_SIZE = 256.0
Range = tuple[float, float]


class _Patch(NamedTuple):
    """Geometry of one pasted rectangle per sample. size ``(B, 2)``: length x width (rows x columns);
    source ``(B, 2)`` int64: its top-left; centre ``(B, 2)``: the continuous target centre; rotation
    ``(B, 2)``: cos, sin of the angle; box ``(B, 4)`` int64: y, x, h, w of the target's bounding box
    inside the image. canvas bounds ``h * w``; box_is_patch: the box is the unrotated rectangle."""

    size: Tensor
    source: Tensor
    centre: Tensor
    rotation: Tensor
    box: Tensor
    canvas: int
    box_is_patch: bool


def _size_limits(like: Tensor) -> Tensor:
    """``(1, 2)`` int64 ``[H, W]`` of ``like`` ``(B, 3, H, W)``, built on its device without a host copy."""
    height, width = like.shape[2:]
    return (torch.arange(2, device=like.device) * (width - height) + height)[None]


def _reflect(index: Tensor, size: int) -> Tensor:
    """Maps ``[-(size - 1), 2 * (size - 1)]`` into ``[0, size)`` by reflection (edge not repeated)."""
    index = index.abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


def translate_batch(
    images: Tensor, *, max_shift: float, generator: torch.Generator, out: Tensor | None = None
) -> Tensor:
    """Shifts each sample by its own integer offset in [-max_shift, max_shift] px per axis, reflecting at
    the border (one gather). images ``(B, 3, H, W)`` -> ``out`` (new, or the given contiguous tensor)."""
    check_images(images, generator)
    batch, channels, height, width = images.shape
    out = torch.empty(images.shape, dtype=images.dtype, device=images.device) if out is None else out
    if out.shape != images.shape or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous tensor of shape {tuple(images.shape)}")
    limit = min(math.floor(max_shift), height - 1, width - 1)
    if limit <= 0:
        return out.copy_(images)
    shift = torch.randint(-limit, limit + 1, (batch, 2), generator=generator, device=images.device)
    rows = _reflect(torch.arange(height, device=images.device) - shift[:, :1], height)  # (B, H)
    cols = _reflect(torch.arange(width, device=images.device) - shift[:, 1:], width)  # (B, W)
    index = (rows[:, :, None] * width + cols[:, None, :]).view(batch, 1, -1).expand(batch, channels, -1)
    torch.gather(images.contiguous().view(batch, channels, -1), 2, index, out=out.view(batch, channels, -1))
    return out


def _randint_below(generator: torch.Generator, bound: Tensor) -> Tensor:
    """Integers uniform in ``[0, bound)`` for a per-sample ``bound`` ``(B,)`` >= 1."""
    u = torch.rand(bound.shape, generator=generator, device=bound.device, dtype=torch.float32)
    return torch.minimum((u * bound).long(), bound - 1)


def _cutpaste_geometry(like: Tensor, area_ratio: Range, aspect_ratio: Range, generator: torch.Generator) -> _Patch:
    """Axis-aligned patches for ``like`` ``(B, 3, H, W)``: area U(area_ratio) * H * W, aspect from
    (lo, 1) or (1, hi) with probability 1/2 each."""
    batch, _, height, width = like.shape
    (lo, hi), (a_lo, a_hi) = aspect_ratio, area_ratio
    if not (0 < lo <= 1 <= hi and 0 < a_lo <= a_hi < 1):
        raise ValueError(f"invalid area_ratio {area_ratio} or aspect_ratio {aspect_ratio}")
    u = uniform(generator, like, batch, 3)
    area = (a_lo + (a_hi - a_lo) * u[:, 0]) * (height * width)
    # Log-uniform on each piece: with lo ~ 1/hi (0.3, 3.3) r and 1/r are then equally likely, so tall and
    # wide patches share one distribution (as exp(U(log lo, log hi)) in public reimplementations); a
    # plain uniform would make patches from (1, 3.3) far more elongated than those from (0.3, 1).
    ratio = (torch.where(u[:, 1] < 0.5, math.log(lo), math.log(hi)) * u[:, 2]).exp()
    size = torch.stack(
        [(area * ratio).sqrt().round().clamp(1, height), (area / ratio).sqrt().round().clamp(1, width)], 1
    )
    extent = size.long()
    room = _size_limits(like) - extent + 1
    source = torch.stack([_randint_below(generator, room[:, k]) for k in (0, 1)], 1)
    corner = torch.stack([_randint_below(generator, room[:, k]) for k in (0, 1)], 1)
    # Canvas bound: h * w <= (sqrt(A r) + 1/2) (sqrt(A / r) + 1/2) <= A + sqrt(A * max(hi, 1 / lo)) + 1/4.
    most = a_hi * height * width
    canvas = min(height * width, math.ceil(most + math.sqrt(most * max(hi, 1.0 / lo)) + 1.0))
    rotation = torch.stack([torch.ones_like(area), torch.zeros_like(area)], 1)
    return _Patch(size, source, corner + size / 2, rotation, torch.cat([corner, extent], 1), canvas, True)


def _scar_geometry(
    like: Tensor,
    width_px: Range,
    length_px: Range,
    degrees: float,
    generator: torch.Generator,
    scale: float | None = None,
) -> _Patch:
    """Rectangles of U(width_px) x U(length_px) px at 256 px (scaled by ``scale``, default H / 256) for
    ``like`` ``(B, 3, H, W)``, rotated by U(-degrees, degrees) and centred so that they lie inside the image."""
    batch, _, height, width = like.shape
    scale = height / REFERENCE_SIZE if scale is None else scale
    u = uniform(generator, like, batch, 5)
    wide = ((width_px[0] + (width_px[1] - width_px[0]) * u[:, 0]) * scale).round().clamp(1, width)
    length = ((length_px[0] + (length_px[1] - length_px[0]) * u[:, 1]) * scale).round().clamp(1, height)
    angle = torch.deg2rad((2.0 * u[:, 2] - 1.0) * degrees)
    cos, sin = angle.cos(), angle.sin()
    half = torch.stack([cos.abs() * length + sin.abs() * wide, sin.abs() * length + cos.abs() * wide], 1) / 2
    limits = _size_limits(like)
    centre = half + u[:, 3:] * (limits - 2 * half).clamp_min(0)
    corner = torch.minimum((centre - half).floor().clamp_min(0).long(), limits - 1)
    extent = (torch.minimum((centre + half).ceil().long(), limits) - corner).clamp_min(1)
    size = torch.stack([length, wide], 1)
    room = limits - size.long() + 1
    source = torch.stack([_randint_below(generator, room[:, k]) for k in (0, 1)], 1)
    # Canvas bound: a box side is at most the diagonal of the largest rectangle plus 2.
    side = math.ceil(math.hypot(width_px[1] * scale + 0.5, length_px[1] * scale + 0.5)) + 2
    box = torch.cat([corner, extent], 1)
    rotation = torch.stack([cos, sin], 1)
    return _Patch(size, source, centre, rotation, box, min(side, height) * min(side, width), False)


def _select(pick: Tensor, first: _Patch, second: _Patch) -> _Patch:
    """Per sample, ``first`` where ``pick`` ``(B,)`` is True, else ``second``."""
    fields = [torch.where(pick[:, None], a, b) for a, b in zip(first[:5], second[:5], strict=True)]
    return _Patch(*fields, max(first.canvas, second.canvas), first.box_is_patch and second.box_is_patch)


def _where(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``torch.where(mask, a, b)`` into ``a``; on CPU as ``a * m + b * (1 - m)``: exact for m in {0, 1}
    and several times faster there than ``torch.where``."""
    if not runs_on_cpu(a):
        return torch.where(mask, a, b)
    weight = mask.to(a.dtype)
    return a.mul_(weight).addcmul_(b, 1.0 - weight)


def _put(flat: Tensor, index: Tensor, values: Tensor) -> None:
    """``flat[index] = values`` (1-D; duplicate indices carry identical values). ``put_`` is fastest on
    CPU but refused under ``torch.use_deterministic_algorithms``, where ``index_put_`` does the same."""
    if torch.are_deterministic_algorithms_enabled():
        flat.index_put_((index,), values)
    else:
        flat.put_(index, values)


def _paste(images: Tensor, out: Tensor, patch: _Patch, jitter: Jitter, *, masks: bool = False) -> Tensor | None:
    """Pastes one jittered patch per sample from ``images`` into ``out`` (both ``(B, 3, H, W)`` contiguous,
    equal on entry); returns masks ``(B, 1, H, W)`` bool if asked. Each of the ``N = patch.canvas`` entries
    of the target box has its pixel centre rotated back into the source rectangle and, if inside, copies
    the source pixel there. Only these ``(B, 3, N)`` pixels are jittered (contrast mean over the patch, as
    ColorJitter on a crop) and written with one ``put_`` (much faster on CPU than ``scatter_``)."""
    batch, channels, height, width = images.shape
    size, device = patch.canvas, images.device
    box_y, box_x, box_h, box_w = (patch.box[:, k, None] for k in range(4))
    entry = torch.arange(size, device=device)
    valid = entry < box_h * box_w  # (B, N)
    # Entries past the box repeat entry 0 (same pixel; its value is copied below), so duplicates write
    # identical values. Row and column without an integer division: (entry + 0.5) / w is at least
    # 0.5 / w away from an integer, far more than float32 rounding for canvases below 4M entries.
    entry = torch.where(valid, entry, 0)
    row = entry.float().add_(0.5).div_(box_w).floor_().long()
    ty, tx = box_y + row, box_x + entry - row * box_w
    top, left = patch.source[:, :1], patch.source[:, 1:]
    if patch.box_is_patch:  # every entry of the box is inside the rectangle
        inside, sy, sx = None, top + row, left + (tx - box_x)
    else:
        dy = (ty.float() + 0.5) - patch.centre[:, :1]
        dx = (tx.float() + 0.5) - patch.centre[:, 1:]
        cos, sin = patch.rotation[:, :1], patch.rotation[:, 1:]
        along, across = cos * dy + sin * dx, cos * dx - sin * dy  # along the length (the rows), across
        half_l, half_w = patch.size[:, :1] / 2, patch.size[:, 1:] / 2
        inside = (along >= -half_l) & (along < half_l) & (across >= -half_w) & (across < half_w)
        inside = torch.where(valid, inside, inside[:, :1])
        last_y, last_x = top + patch.size[:, :1].long() - 1, left + patch.size[:, 1:].long() - 1
        sy = torch.minimum(torch.maximum((along + half_l).floor_().long().add_(top), top), last_y)
        sx = torch.minimum(torch.maximum((across + half_w).floor_().long().add_(left), left), last_x)
    flat = images.view(batch, channels, height * width)
    target = ty * width + tx  # (B, N)
    pixels = flat.gather(2, (sy * width + sx)[:, None].expand(batch, channels, size))
    if inside is None:  # the padding entries copy entry 0: leave them out of the contrast mean
        values = apply_jitter(pixels, jitter, repeats=size - (box_h * box_w)[:, 0])
    else:
        values = apply_jitter(pixels, jitter, weight=(inside & valid).to(images.dtype))
        values = _where(inside[:, None], values, flat.gather(2, target[:, None].expand(batch, channels, size)))
    values = _where(valid[:, None], values, values[:, :, :1].clone())
    planes = torch.arange(batch * channels, device=device).view(batch, channels, 1) * (height * width)
    _put(out.view(-1), (planes + target[:, None]).view(-1), values.reshape(-1))
    if not masks:
        return None
    mask = torch.zeros(batch, height * width, dtype=torch.bool, device=device)
    pasted = torch.ones_like(valid) if inside is None else inside
    _put(mask.view(-1), (planes[:, 0] // channels + target).view(-1), pasted.reshape(-1))
    return mask.view(batch, 1, height, width)


def _paste_new(
    images: Tensor, patch: _Patch, jitter: float, generator: torch.Generator, return_masks: bool
) -> Tensor | tuple[Tensor, Tensor]:
    source = images.contiguous()
    out, params = source.clone(), draw_jitter(len(source), (jitter,) * 4, generator, source)
    masks = _paste(source, out, patch, params, masks=return_masks)
    return (out, masks) if return_masks else out


def cutpaste_batch(
    images: Tensor,
    *,
    generator: torch.Generator,
    area_ratio: Range = (0.02, 0.15),
    aspect_ratio: Range = (0.3, 3.3),
    jitter: float = 0.1,
    return_masks: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """CutPaste: cut a rectangle, colour-jitter it, paste it at another place of the same image.

    Per sample: area U(area_ratio) * H * W, aspect (rows / columns) log-uniform on (lo, 1) or (1, hi)
    with probability 1/2 each, source and target uniform with the patch inside, brightness, contrast,
    saturation and hue jitter up to ``jitter`` in a random order. images ``(B, 3, H, W)`` in [0, 1] ->
    ``(B, 3, H, W)``, plus masks ``(B, 1, H, W)`` bool of the pasted pixels when ``return_masks``.
    """
    check_images(images, generator)
    patch = _cutpaste_geometry(images, area_ratio, aspect_ratio, generator)
    return _paste_new(images, patch, jitter, generator, return_masks)


def scar_batch(
    images: Tensor,
    *,
    generator: torch.Generator,
    width: Range = (2.0, 16.0),
    length: Range = (10.0, 25.0),
    rotation: float = 45.0,
    jitter: float = 0.1,
    return_masks: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """CutPaste-Scar: a thin rectangle, width U(width) x length U(length) px (ranges for 256 px, scaled
    by H / 256; the length runs along the rows), rotated by U(-rotation, rotation) degrees, cut at a
    random place, jittered like :func:`cutpaste_batch` and pasted, fully inside, at another.
    images ``(B, 3, H, W)`` -> ``(B, 3, H, W)``, plus masks ``(B, 1, H, W)`` bool when ``return_masks``.
    """
    check_images(images, generator)
    return _paste_new(
        images, _scar_geometry(images, width, length, rotation, generator), jitter, generator, return_masks
    )
