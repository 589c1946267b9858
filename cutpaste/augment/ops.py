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

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
REFERENCE_SIZE = 256.0
# ITU-R 601 luma weights, the ones torchvision uses for grayscale, contrast and saturation.
_GRAY = (0.2989, 0.587, 0.114)
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = range(4)
Range = tuple[float, float]
# Pixels per CPU chunk summed over the samples: a stage's temporaries stay in cache, the Python
# overhead per chunk stays small.
_CPU_CHUNK = 1 << 18


class _Jitter(NamedTuple):
    """factors ``(n, 4)``: brightness/contrast/saturation factors and hue shift; order ``(n, 4)`` int64:
    the op each sample applies at each stage; enabled: ops with a non-zero range (others are skipped)."""

    factors: Tensor
    order: Tensor
    enabled: tuple[bool, bool, bool, bool]


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


def _check_images(images: Tensor, generator: torch.Generator) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"expected float images in [0, 1], got dtype {images.dtype}")
    if generator.device.type != images.device.type:
        raise ValueError(f"generator is on {generator.device}, images are on {images.device}")


def _rand(generator: torch.Generator, like: Tensor, *shape: int) -> Tensor:
    """Uniform [0, 1) float32 parameters (whatever the image dtype) on ``like``'s device."""
    return torch.rand(shape, generator=generator, device=like.device, dtype=torch.float32)


def _draw_jitter(n: int, amounts: tuple[float, ...], generator: torch.Generator, like: Tensor) -> _Jitter:
    """ColorJitter parameters for ``n`` samples: factors U[max(0, 1 - v), 1 + v], hue shift U[-h, h]."""
    u = _rand(generator, like, n, 4)
    ranges = [(max(0.0, 1.0 - v), 1.0 + v) for v in amounts[:3]] + [(-amounts[3], amounts[3])]
    factors = torch.stack([lo + (hi - lo) * u[:, k] for k, (lo, hi) in enumerate(ranges)], dim=1)
    order = _rand(generator, like, n, 4).argsort(dim=1)  # a uniformly random permutation per sample
    return _Jitter(factors, order, tuple(v > 0 for v in amounts))


def _size_limits(like: Tensor) -> Tensor:
    """``(1, 2)`` int64 ``[H, W]`` of ``like`` ``(B, 3, H, W)``, built on its device without a host copy."""
    height, width = like.shape[2:]
    return (torch.arange(2, device=like.device) * (width - height) + height)[None]


def _on_cpu(x: Tensor) -> bool:
    """Host syncs are free for CPU tensors: samples are then indexed, elsewhere selected with where."""
    return x.device.type == "cpu"


def _channel_sums(x: Tensor, weight: Tensor | None) -> Tensor:
    """``(n, 3, L) -> (n, 3)`` sums over the pixels, weighted by ``weight`` ``(n, L)`` when given."""
    # (not bmm: BLAS results may change with memory alignment, and a seeded batch must repeat bitwise)
    return x.sum(dim=2) if weight is None else (x * weight[:, None]).sum(dim=2)


def _adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """``(n, 3, L)``, shift ``(n,)`` in [-0.5, 0.5] -> new ``(n, 3, L)``, as torchvision's ``adjust_hue``.
    HSV keeps max and chroma, so only the sector ``h = 6 * hue`` is needed; RGB is then ``min + chroma * p``,
    ``p`` = ``clamp(|h - 3| - 1)``, ``1 - clamp(|h - 2| - 1)``, ``1 - clamp(|h - 4| - 1)``. ``sign(max - c)``
    picks the max channel: ``torch.where`` is several times slower on CPU than these elementwise ops."""
    r, g, b = x.unbind(1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    chroma = maxc - minc
    # hue * chroma: g - b if red is the max, 2C + b - r if green, 4C + r - g if blue (ties: red, green).
    not_r, not_g = torch.sub(maxc, r).sign_(), torch.sub(maxc, g).sign_()
    scaled, green = torch.sub(g, b), torch.sub(b, r).add_(chroma, alpha=2.0)
    blue = torch.sub(r, g).add_(chroma, alpha=4.0)
    green.add_(not_g.mul_(blue.sub_(green)))
    scaled.add_(not_r.mul_(green.sub_(scaled)))
    # Sector, shifted and wrapped into [0, 6); the +6 keeps it positive before the wrap.
    hue = scaled.div_(chroma.clamp_min(torch.finfo(x.dtype).tiny)).add_((6.0 * shift + 6.0)[:, None])
    hue.sub_(hue.mul(1.0 / 6.0).floor_().mul_(6.0))
    out = torch.empty_like(x)
    for plane, centre, base, sign in zip(out.unbind(1), (3.0, 2.0, 4.0), (minc, maxc, maxc), (1, -1, -1), strict=True):
        torch.sub(hue, centre, out=plane).abs_().sub_(1.0).clamp_(0.0, 1.0)
        torch.addcmul(base, plane, chroma, value=sign, out=plane)
    return out


class _Affine(NamedTuple):
    """One stage's ``clamp(alpha * x + gamma * gray(x) + delta)`` per sample: alpha ``(n, 1, 1)``, delta
    ``(n, 1)``, gamma ``(n, 1)``; samples whose op at this stage is hue get the identity."""

    alpha: Tensor
    delta: Tensor
    gamma: Tensor


def _pixel_counts(x: Tensor, weight: Tensor | None, repeats: Tensor | None) -> tuple[Tensor | int, Tensor | None]:
    """The number of real pixels per sample (the contrast mean's divisor), and ``repeats`` as ``(n, 1)`` in
    ``x``'s dtype when they are what marks the padding."""
    if weight is not None:
        return weight.sum(dim=1, keepdim=True).clamp_min(1.0), repeats
    repeats = None if repeats is None else repeats.to(x.dtype)[:, None]
    return x.shape[2] - (0 if repeats is None else repeats), repeats


def _image_sums(x: Tensor, total: Tensor, repeats: Tensor | None) -> Tensor:
    """Channel sums without the padding copies of pixel 0 (read from ``x`` now: it changes stage by stage)."""
    return total if repeats is None else total - repeats * x[:, :, 0]


def _affine_stage(op: Tensor, jitter: _Jitter, sums: Tensor | None, count: Tensor | int) -> _Affine:
    """Brightness, contrast and saturation share one affine form, so a stage needs only per-sample
    coefficients, not a branch per op; contrast reads the current channel means from ``sums``."""
    factors, (use_b, use_c, use_s, _) = jitter.factors, jitter.enabled
    alpha = torch.ones_like(factors[:, 0])
    for kind, used in ((_BRIGHTNESS, use_b), (_CONTRAST, use_c), (_SATURATION, use_s)):
        if used:
            alpha = torch.where(op == kind, factors[:, kind], alpha)
    delta = torch.zeros_like(alpha)
    if use_c:
        mean = sums / count  # (n, 3) channel means of the current image
        gray_mean = mean[:, 0] * _GRAY[0] + mean[:, 1] * _GRAY[1] + mean[:, 2] * _GRAY[2]
        delta = torch.where(op == _CONTRAST, (1.0 - factors[:, 1]) * gray_mean, delta)
    gamma = torch.where(op == _SATURATION, 1.0 - factors[:, 2], 0.0)[:, None]
    return _Affine(alpha[:, None, None], delta[:, None], gamma)


def _hue_stage(op: Tensor, factors: Tensor, on_cpu: bool) -> tuple[Tensor | None, Tensor | None]:
    """(indices, shifts) of the samples whose op at this stage is hue on CPU, ``(None, None)`` when none is;
    elsewhere ``(None, shift per sample)``, 0 for the others, so no host sync is needed."""
    if on_cpu:
        hue_index = (op == _HUE).nonzero()[:, 0]
        return (hue_index, factors[hue_index, 3]) if hue_index.numel() else (None, None)
    return None, torch.where(op == _HUE, factors[:, 3], 0.0)


def _apply_affine(part: Tensor, affine: _Affine, *, saturation: bool) -> None:
    """One chunk ``(n, 3, l)`` of one stage, in place; the gray image is only computed when saturation is used."""
    offset = affine.delta
    if saturation:
        r, g, b = part.unbind(1)
        gray = torch.mul(r, _GRAY[0]).add_(g, alpha=_GRAY[1]).add_(b, alpha=_GRAY[2])
        offset = gray.mul_(affine.gamma).add_(affine.delta)
    torch.addcmul(offset[:, None], part, affine.alpha, out=part).clamp_(0.0, 1.0)


def _jitter(x: Tensor, jitter: _Jitter, weight: Tensor | None = None, repeats: Tensor | None = None) -> Tensor:
    """Applies the four ops in each sample's own order to ``x`` ``(n, 3, L)``, in place; returns ``x``.
    Brightness, contrast and saturation are each ``clamp(alpha * x + gamma * gray(x) + delta)``: one stage
    applies whichever each sample drew with the same ops. Hue runs on the samples that drew it: indexed on
    CPU, computed for all and selected elsewhere (no host sync). On CPU a stage walks cache-sized chunks,
    summing them for the next contrast mean, which skips pixels with ``weight`` ``(n, L)`` 0 and the last
    ``repeats`` ``(n,)`` ones (padding copies of pixel 0)."""
    factors, order, (use_b, use_c, use_s, use_h) = jitter
    affine, on_cpu, length = use_b or use_c or use_s, _on_cpu(x), x.shape[2]
    if not (affine or use_h):
        return x
    step = max(1024, _CPU_CHUNK // max(1, x.shape[0])) if on_cpu else length  # one chunk on accelerators
    count, repeats = _pixel_counts(x, weight, repeats)
    sums = _image_sums(x, _channel_sums(x, weight), repeats) if use_c else None
    for stage in range(4):
        op = order[:, stage]
        affine_stage = _affine_stage(op, jitter, sums, count) if affine else None
        hue_index, hue_shift = _hue_stage(op, factors, on_cpu) if use_h else (None, None)
        if not affine and hue_index is None and on_cpu:
            continue
        later = use_c and stage < 3 and (not on_cpu or bool((order[:, stage + 1 :] == _CONTRAST).any()))
        next_sums = torch.zeros_like(sums) if later else None
        for start in range(0, length, step):
            part = x[:, :, start : start + step]
            if affine_stage is not None:
                _apply_affine(part, affine_stage, saturation=use_s)
            if hue_index is not None:
                part.index_copy_(0, hue_index, _adjust_hue(part.index_select(0, hue_index), hue_shift))
            elif use_h and not on_cpu:
                part.copy_(torch.where((op == _HUE)[:, None, None], _adjust_hue(part, hue_shift), part))
            if later:
                next_sums += _channel_sums(part, None if weight is None else weight[:, start : start + step])
        if later:
            sums = _image_sums(x, next_sums, repeats)
    return x


def color_jitter_batch(
    images: Tensor, *, brightness: float, contrast: float, saturation: float, hue: float, generator: torch.Generator
) -> Tensor:
    """torchvision ``ColorJitter`` per sample: own factors U[max(0, 1 - v), 1 + v], hue shift U[-hue, hue]
    and own op order. images ``(B, 3, H, W)`` in [0, 1] -> new contiguous ``(B, 3, H, W)``."""
    _check_images(images, generator)
    amounts = (brightness, contrast, saturation, hue)
    if min(amounts) < 0 or hue > 0.5:
        raise ValueError(f"jitter ranges must be >= 0 and hue <= 0.5, got {amounts}")
    batch, channels, height, width = images.shape
    x = images.clone(memory_format=torch.contiguous_format).view(batch, channels, height * width)
    return _jitter(x, _draw_jitter(batch, amounts, generator, images)).view(batch, channels, height, width)


def _reflect(index: Tensor, size: int) -> Tensor:
    """Maps ``[-(size - 1), 2 * (size - 1)]`` into ``[0, size)`` by reflection (edge not repeated)."""
    index = index.abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


def translate_batch(
    images: Tensor, *, max_shift: float, generator: torch.Generator, out: Tensor | None = None
) -> Tensor:
    """Shifts each sample by its own integer offset in [-max_shift, max_shift] px per axis, reflecting at
    the border (one gather). images ``(B, 3, H, W)`` -> ``out`` (new, or the given contiguous tensor)."""
    _check_images(images, generator)
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
    u = _rand(generator, like, batch, 3)
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
    u = _rand(generator, like, batch, 5)
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
    if not _on_cpu(a):
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


def _paste(images: Tensor, out: Tensor, patch: _Patch, jitter: _Jitter, *, masks: bool = False) -> Tensor | None:
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
        values = _jitter(pixels, jitter, repeats=size - (box_h * box_w)[:, 0])
    else:
        values = _jitter(pixels, jitter, weight=(inside & valid).to(images.dtype))
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
    out, params = source.clone(), _draw_jitter(len(source), (jitter,) * 4, generator, source)
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
    _check_images(images, generator)
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
    _check_images(images, generator)
    return _paste_new(
        images, _scar_geometry(images, width, length, rotation, generator), jitter, generator, return_masks
    )
