"""CutPaste augmentations for whole batches on the training device (Li et al., CVPR 2021, Sec. 3).

Every function takes float images ``(B, 3, H, W)`` in ``[0, 1]`` on any device and a
``torch.Generator`` on that device. Each sample gets its own random parameters, drawn as tensors from
the generator only, so a seeded generator reproduces a batch exactly (bitwise on CPU). Nothing loops
over the samples in Python: the only loops run over the four colour-jitter stages.

A patch is pasted by enumerating, per sample, the pixels of the target's bounding box (a "canvas" of
``N`` entries, ``N`` the largest box any sample can draw): for each entry we decide whether it lies
inside the (rotated) target rectangle and which source pixel it copies, gather those source pixels,
colour-jitter only them and scatter them back. Normal CutPaste is the rotation-0 case of CutPaste-Scar,
and the jitter touches at most ``area_ratio[1]`` of the image instead of all of it.

Pixel sizes (scar width/length, translation) are given for a 256 px image, as in the paper, and are
scaled by ``H / 256`` inside so a smaller image keeps the same geometry relative to the object.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
from torch import Tensor

from cutpaste.config import VARIANTS, AugmentConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

REFERENCE_SIZE = 256.0
# ITU-R 601 luma weights, the ones torchvision uses for grayscale, contrast and saturation.
_GRAY = (0.2989, 0.587, 0.114)
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = range(4)


class _Jitter(NamedTuple):
    """Per-sample colour-jitter parameters of ``n`` samples.

    factors: ``(n, 4)`` brightness, contrast and saturation factors and the hue shift.
    order: ``(n, 4)`` int64, the op (``_BRIGHTNESS`` ... ``_HUE``) each sample applies at each stage.
    enabled: which ops have a non-zero range; disabled ops are skipped (and so are exact identities).
    """

    factors: Tensor
    order: Tensor
    enabled: tuple[bool, bool, bool, bool]


class _Patch(NamedTuple):
    """Per-sample geometry of one pasted rectangle; every field is ``(B,)``.

    The source is an axis-aligned ``length x width`` rectangle (rows x columns) with top-left corner
    ``(src_y, src_x)``. It is rotated by the angle with ``(cos, sin)`` and centred at the continuous
    point ``(cy, cx)`` of the output. ``(box_y, box_x, box_h, box_w)`` is the integer bounding box of
    the rotated target inside the image. Python values: ``canvas`` bounds ``box_h * box_w``; ``rotated``
    is False when every angle is 0 (plain CutPaste), which lets :func:`_paste` skip the rotation.
    """

    length: Tensor
    width: Tensor
    src_y: Tensor
    src_x: Tensor
    cy: Tensor
    cx: Tensor
    cos: Tensor
    sin: Tensor
    box_y: Tensor
    box_x: Tensor
    box_h: Tensor
    box_w: Tensor
    canvas: int
    rotated: bool


# --------------------------------------------------------------------------- colour jitter


def _check_images(images: Tensor, generator: torch.Generator) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"expected float images in [0, 1], got dtype {images.dtype}")
    if generator.device.type != images.device.type:
        raise ValueError(f"generator is on {generator.device}, images are on {images.device}")


def _rand(generator: torch.Generator, like: Tensor, *shape: int) -> Tensor:
    """Uniform [0, 1) float32 parameters (float32 whatever the image dtype) on ``like``'s device."""
    return torch.rand(shape, generator=generator, device=like.device, dtype=torch.float32)


def _draw_jitter(
    n: int, brightness: float, contrast: float, saturation: float, hue: float, generator, like: Tensor
) -> _Jitter:
    """torchvision ``ColorJitter`` parameters for ``n`` samples: factors U[max(0, 1-v), 1+v], hue U[-h, h]."""
    u = _rand(generator, like, n, 4)
    ranges = [(max(0.0, 1.0 - v), 1.0 + v) for v in (brightness, contrast, saturation)] + [(-hue, hue)]
    factors = torch.stack([lo + (hi - lo) * u[:, k] for k, (lo, hi) in enumerate(ranges)], dim=1)
    # A uniformly random permutation of the four ops per sample.
    order = _rand(generator, like, n, 4).argsort(dim=1)
    enabled = (brightness > 0, contrast > 0, saturation > 0, hue > 0)
    return _Jitter(factors, order, enabled)


# Work per CPU chunk, in pixels per channel summed over the batch: small enough for the temporaries
# of one stage to stay in cache, large enough to keep the Python overhead per chunk negligible.
_CPU_CHUNK = 1 << 18


def _chunks(x: Tensor) -> list[tuple[int, int]]:
    """Pixel ranges ``[start, stop)`` of ``x`` ``(n, 3, L)`` processed together: one on accelerators."""
    length = x.shape[2]
    if x.device.type != "cpu":
        return [(0, length)]
    step = max(1024, _CPU_CHUNK // max(1, x.shape[0]))
    return [(start, min(start + step, length)) for start in range(0, length, step)]


def _channel_sums(x: Tensor, weight: Tensor | None) -> Tensor:
    """``(n, 3, L) -> (n, 3)`` sums over the pixels (weighted by ``weight`` ``(n, L)`` when given)."""
    return x.sum(dim=2) if weight is None else (x * weight[:, None]).sum(dim=2)


@functools.cache
def _hue_constants(device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """``(1, 3, 1)`` ramp centres, biases and signs for red, green, blue (made once per device)."""
    values = ([3.0, 2.0, 4.0], [-1.0, 2.0, 2.0], [1.0, -1.0, -1.0])
    return tuple(torch.tensor(v, dtype=dtype).view(1, 3, 1).to(device) for v in values)


def _adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """``(n, 3, L)``, shift ``(n,)`` in [-0.5, 0.5]: rotates the HSV hue like torchvision's ``adjust_hue``.

    HSV keeps value (max) and chroma (max - min), so only the hue sector ``h = 6 * hue`` in [0, 6) has
    to be computed; back to RGB with the closed form ``min + chroma * p`` where ``p`` is
    ``clamp(|h - 3| - 1)``, ``clamp(2 - |h - 2|)``, ``clamp(2 - |h - 4|)`` for red, green, blue.
    Returns a new ``(n, 3, L)`` tensor.
    """
    r, g, b = x.unbind(1)
    maxc = torch.maximum(r, g)
    torch.maximum(maxc, b, out=maxc)
    minc = torch.minimum(r, g)
    torch.minimum(minc, b, out=minc)
    chroma = maxc - minc
    # hue * chroma by the channel holding the maximum (red wins ties, then green, like torchvision).
    scaled = torch.where(maxc == g, torch.sub(b, r).add_(chroma, alpha=2.0), torch.sub(r, g).add_(chroma, alpha=4.0))
    scaled = torch.where(maxc == r, torch.sub(g, b), scaled)
    # Hue in sectors, shifted and moved into [0, 6); the +6 keeps it positive before the wrap.
    hue = scaled.div_(chroma.clamp_min(1e-12)).add_((6.0 * shift + 6.0)[:, None])
    hue = hue.sub_(hue.mul(1.0 / 6.0).floor_().mul_(6.0))
    centre, bias, sign = _hue_constants(x.device, x.dtype)
    ramp = torch.addcmul(bias, (hue[:, None] - centre).abs_(), sign)
    return torch.addcmul(minc[:, None], ramp.clamp_(0.0, 1.0), chroma[:, None])


def _jitter(x: Tensor, jitter: _Jitter, weight: Tensor | None = None) -> Tensor:
    """Applies the four ops, in each sample's own order, to ``x`` ``(n, 3, L)`` in place; returns ``x``.

    Brightness, contrast and saturation are all ``clamp(alpha * x + gamma * gray(x) + delta)`` with
    per-sample coefficients, so one stage applies whichever of the three each sample drew with the same
    few tensor ops. Hue runs only on the samples that drew it at that stage: on CPU by indexing them,
    on accelerators by computing all and selecting (no host sync). On CPU each stage walks the pixels
    in cache-sized chunks and sums the result on the way for the next stage's contrast mean.
    ``weight`` ``(n, L)`` marks the pixels that belong to the image; the contrast mean uses only those.
    """
    factors, order, enabled = jitter
    use_b, use_c, use_s, use_h = enabled
    if not any(enabled):
        return x
    count = x.shape[2] if weight is None else weight.sum(dim=1, keepdim=True).clamp_min(1.0)
    sums = _channel_sums(x, weight) if use_c else None
    on_cpu = x.device.type == "cpu"
    ones = torch.ones_like(factors[:, 0])
    for stage in range(4):
        op = order[:, stage]
        affine = use_b or use_c or use_s
        if affine:
            is_c = op == _CONTRAST
            is_s = op == _SATURATION
            alpha = ones
            for kind, used in ((_BRIGHTNESS, use_b), (_CONTRAST, use_c), (_SATURATION, use_s)):
                if used:
                    alpha = torch.where(op == kind, factors[:, kind], alpha)
            delta = torch.zeros_like(alpha)
            if use_c:
                mean = sums / count  # (n, 3) channel means of the current image
                gray_mean = mean[:, 0] * _GRAY[0] + mean[:, 1] * _GRAY[1] + mean[:, 2] * _GRAY[2]
                delta = torch.where(is_c, (1.0 - factors[:, 1]) * gray_mean, delta)
            gamma = torch.where(is_s, 1.0 - factors[:, 2], 0.0)[:, None]
            alpha, delta = alpha[:, None, None], delta[:, None]
        hue_index: Tensor | None = None
        if use_h:
            is_h = op == _HUE
            if on_cpu:
                hue_index = is_h.nonzero()[:, 0]
                hue_index = hue_index if hue_index.numel() else None
                hue_shift = None if hue_index is None else factors[hue_index, 3]
            else:
                hue_shift = torch.where(is_h, factors[:, 3], 0.0)
        if not affine and hue_index is None and on_cpu:
            continue
        later_contrast = use_c and stage < 3
        next_sums = torch.zeros_like(sums) if later_contrast else None
        for start, stop in _chunks(x):
            part = x[:, :, start:stop]
            if affine:
                offset = delta
                if use_s:
                    r, g, b = part.unbind(1)
                    gray = torch.mul(r, _GRAY[0]).add_(g, alpha=_GRAY[1]).add_(b, alpha=_GRAY[2])
                    offset = gray.mul_(gamma).add_(delta)
                torch.addcmul(offset[:, None], part, alpha, out=part)
                part.clamp_(0.0, 1.0)
            if hue_index is not None:
                part.index_copy_(0, hue_index, _adjust_hue(part.index_select(0, hue_index), hue_shift))
            elif use_h and not on_cpu:
                part.copy_(torch.where(is_h[:, None, None], _adjust_hue(part, hue_shift), part))
            if next_sums is not None:
                w = None if weight is None else weight[:, start:stop]
                next_sums += _channel_sums(part, w)
        if later_contrast:
            sums = next_sums
    return x


def color_jitter_batch(
    images: Tensor,
    *,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    generator: torch.Generator,
) -> Tensor:
    """torchvision ``ColorJitter`` on every sample with its own factors and its own op order.

    images: ``(B, 3, H, W)`` float in [0, 1]. Factors are U[max(0, 1 - v), 1 + v] for brightness,
    contrast and saturation, the hue shift U[-hue, hue]; contrast blends with the image's mean luma.
    Returns a new contiguous ``(B, 3, H, W)`` tensor; a zero range skips that op.
    """
    _check_images(images, generator)
    if hue > 0.5:
        raise ValueError(f"hue must lie in [0, 0.5], got {hue}")
    batch, channels, height, width = images.shape
    params = _draw_jitter(batch, brightness, contrast, saturation, hue, generator, images)
    x = images.clone(memory_format=torch.contiguous_format).view(batch, channels, height * width)
    return _jitter(x, params).view(batch, channels, height, width)


# --------------------------------------------------------------------------- translation


def _reflect(index: Tensor, size: int) -> Tensor:
    """Maps indices in ``[-(size - 1), 2 * (size - 1)]`` into ``[0, size)`` by reflection (edge not repeated)."""
    index = index.abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


def translate_batch(images: Tensor, *, max_shift: float, generator: torch.Generator) -> Tensor:
    """Shifts each sample by its own integer offset in ``[-max_shift, max_shift]`` px per axis.

    images: ``(B, 3, H, W)``; the uncovered border is filled by reflection. Returns a new contiguous
    ``(B, 3, H, W)`` tensor (one gather with flat per-sample indices).
    """
    _check_images(images, generator)
    batch, channels, height, width = images.shape
    limit = min(math.floor(max_shift), height - 1, width - 1)
    if limit <= 0:
        return images.clone(memory_format=torch.contiguous_format)
    shift = torch.randint(-limit, limit + 1, (batch, 2), generator=generator, device=images.device)
    rows = _reflect(torch.arange(height, device=images.device) - shift[:, :1], height)  # (B, H)
    cols = _reflect(torch.arange(width, device=images.device) - shift[:, 1:], width)  # (B, W)
    index = (rows[:, :, None] * width + cols[:, None, :]).view(batch, 1, height * width)
    flat = images.contiguous().view(batch, channels, height * width)
    return flat.gather(2, index.expand(batch, channels, height * width)).view(batch, channels, height, width)


# --------------------------------------------------------------------------- patch geometry


def _randint_below(generator: torch.Generator, bound: Tensor) -> Tensor:
    """``(B,)`` integers uniform in ``[0, bound)`` for a per-sample ``bound`` ``(B,)`` >= 1."""
    u = torch.rand(bound.shape, generator=generator, device=bound.device, dtype=torch.float32)
    return torch.minimum((u * bound).long(), bound - 1)


def _cutpaste_geometry(
    batch: int,
    height: int,
    width: int,
    area_ratio: tuple[float, float],
    aspect_ratio: tuple[float, float],
    generator: torch.Generator,
    like: Tensor,
) -> _Patch:
    """Axis-aligned patch: area U(area_ratio) * H * W, aspect (rows / columns) from (lo, 1) or (1, hi)."""
    lo, hi = aspect_ratio
    if not (0 < lo <= 1 <= hi and 0 < area_ratio[0] <= area_ratio[1] < 1):
        raise ValueError(f"invalid area_ratio {area_ratio} or aspect_ratio {aspect_ratio}")
    u = _rand(generator, like, batch, 3)
    area = (area_ratio[0] + (area_ratio[1] - area_ratio[0]) * u[:, 0]) * (height * width)
    # Log-uniform on each piece: with lo ~ 1/hi (0.3 vs 3.3) tall and wide patches then follow the same
    # distribution (r and 1/r are equally likely), as in the public reimplementations that draw
    # exp(U(log lo, log hi)); a plain uniform on (1, 3.3) would make wide patches far more elongated
    # on average than tall ones on (0.3, 1).
    log_ratio = torch.where(u[:, 1] < 0.5, math.log(lo), math.log(hi)) * u[:, 2]
    ratio = log_ratio.exp()
    length = (area * ratio).sqrt().round().clamp(1, height)
    wide = (area / ratio).sqrt().round().clamp(1, width)
    rows, cols = length.long(), wide.long()
    src_y = _randint_below(generator, height - rows + 1)
    src_x = _randint_below(generator, width - cols + 1)
    box_y = _randint_below(generator, height - rows + 1)
    box_x = _randint_below(generator, width - cols + 1)
    # Canvas bound: h * w <= (sqrt(A r) + 1/2) (sqrt(A / r) + 1/2) <= A + sqrt(A * max(hi, 1 / lo)) + 1/4.
    most = area_ratio[1] * height * width
    canvas = min(height * width, math.ceil(most + math.sqrt(most * max(hi, 1.0 / lo)) + 1.0))
    zero = torch.zeros_like(length)
    return _Patch(
        length=length,
        width=wide,
        src_y=src_y,
        src_x=src_x,
        cy=box_y + length / 2,
        cx=box_x + wide / 2,
        cos=zero + 1.0,
        sin=zero,
        box_y=box_y,
        box_x=box_x,
        box_h=rows,
        box_w=cols,
        canvas=canvas,
        rotated=False,
    )


def _scar_geometry(
    batch: int,
    height: int,
    width: int,
    scar_width: tuple[float, float],
    scar_length: tuple[float, float],
    rotation: float,
    generator: torch.Generator,
    like: Tensor,
) -> _Patch:
    """A ``length x width`` px rectangle (sizes at 256 px, scaled by H / 256) rotated by U(-rot, rot) deg."""
    scale = height / REFERENCE_SIZE
    u = _rand(generator, like, batch, 5)
    wide = ((scar_width[0] + (scar_width[1] - scar_width[0]) * u[:, 0]) * scale).round().clamp(1, width)
    length = ((scar_length[0] + (scar_length[1] - scar_length[0]) * u[:, 1]) * scale).round().clamp(1, height)
    angle = torch.deg2rad((2.0 * u[:, 2] - 1.0) * rotation)
    cos, sin = angle.cos(), angle.sin()
    # Half extents of the rotated rectangle; its centre is drawn so that it lies inside the image.
    half_y = (cos.abs() * length + sin.abs() * wide) / 2
    half_x = (sin.abs() * length + cos.abs() * wide) / 2
    cy = half_y + u[:, 3] * (height - 2 * half_y).clamp_min(0)
    cx = half_x + u[:, 4] * (width - 2 * half_x).clamp_min(0)
    box_y = (cy - half_y).floor().clamp(0, height - 1).long()
    box_x = (cx - half_x).floor().clamp(0, width - 1).long()
    box_h = ((cy + half_y).ceil().clamp(max=height).long() - box_y).clamp_min(1)
    box_w = ((cx + half_x).ceil().clamp(max=width).long() - box_x).clamp_min(1)
    src_y = _randint_below(generator, height - length.long() + 1)
    src_x = _randint_below(generator, width - wide.long() + 1)
    # Canvas bound: a box side is at most the diagonal of the largest rectangle plus 2.
    diagonal = math.hypot(scar_width[1] * scale + 0.5, scar_length[1] * scale + 0.5)
    side = math.ceil(diagonal) + 2
    canvas = min(side, height) * min(side, width)
    return _Patch(length, wide, src_y, src_x, cy, cx, cos, sin, box_y, box_x, box_h, box_w, canvas, rotation != 0)


def _select(pick: Tensor, first: _Patch, second: _Patch) -> _Patch:
    """Per sample, ``first`` where ``pick`` ``(B,)`` is True, else ``second``."""
    fields = [torch.where(pick, a, b) for a, b in zip(first[:-2], second[:-2], strict=True)]
    return _Patch(*fields, canvas=max(first.canvas, second.canvas), rotated=first.rotated or second.rotated)


# --------------------------------------------------------------------------- pasting


def _paste(images: Tensor, out: Tensor, patch: _Patch, jitter: _Jitter) -> Tensor:
    """Pastes one jittered patch per sample into ``out``; returns the masks ``(B, 1, H, W)`` bool.

    images: ``(B, 3, H, W)`` contiguous, the source of the patch and of the unchanged pixels;
    out: ``(B, 3, H, W)`` contiguous, equal to ``images`` on entry, written in place.
    For each of the ``N = patch.canvas`` entries ``(B, N)`` of the target's bounding box, the pixel
    centre is rotated back into the source rectangle's frame; entries inside it copy the source pixel
    under that point. Only the gathered ``(B, 3, N)`` pixels are colour-jittered, with the contrast mean
    over the patch pixels, as a per-image ColorJitter on the cropped patch would do.
    """
    batch, channels, height, width = images.shape
    size = patch.canvas
    entry = torch.arange(size, device=images.device)
    valid = entry < (patch.box_h * patch.box_w)[:, None]  # (B, N)
    # Entries past the box repeat entry 0 (same pixel, same value), which keeps the scatter exact.
    entry = torch.where(valid, entry, 0)
    row = torch.div(entry, patch.box_w[:, None], rounding_mode="floor")
    col = entry - row * patch.box_w[:, None]
    ty, tx = patch.box_y[:, None] + row, patch.box_x[:, None] + col
    top, left = patch.src_y[:, None], patch.src_x[:, None]
    if patch.rotated:
        dy = (ty.float() + 0.5) - patch.cy[:, None]
        dx = (tx.float() + 0.5) - patch.cx[:, None]
        cos, sin = patch.cos[:, None], patch.sin[:, None]
        along = cos * dy + sin * dx  # along the rectangle's length (its rows)
        across = cos * dx - sin * dy
        half_l, half_w = patch.length[:, None] / 2, patch.width[:, None] / 2
        inside = (along >= -half_l) & (along < half_l) & (across >= -half_w) & (across < half_w)
        inside = torch.where(valid, inside, inside[:, :1])
        sy = (along + half_l).floor_().long().add_(top)
        sx = (across + half_w).floor_().long().add_(left)
        sy = torch.minimum(torch.maximum(sy, top), top + patch.length.long()[:, None] - 1)
        sx = torch.minimum(torch.maximum(sx, left), left + patch.width.long()[:, None] - 1)
    else:  # the box is the rectangle itself: every entry of it is inside
        inside = torch.ones_like(valid)
        sy, sx = top + row, left + col
    source = (sy * width + sx)[:, None].expand(batch, channels, size)
    target = (ty * width + tx)[:, None]
    flat = images.view(batch, channels, height * width)
    weight = (inside & valid).to(images.dtype)
    values = _jitter(flat.gather(2, source), jitter, weight=weight)
    if patch.rotated:
        values = torch.where(inside[:, None], values, flat.gather(2, target.expand(batch, channels, size)))
    values = torch.where(valid[:, None], values, values[:, :, :1])
    out.view(batch, channels, height * width).scatter_(2, target.expand(batch, channels, size), values)
    masks = torch.zeros(batch, 1, height * width, dtype=torch.bool, device=images.device)
    return masks.scatter_(2, target, inside[:, None]).view(batch, 1, height, width)


def _paste_jittered(images: Tensor, out: Tensor, patch: _Patch, jitter: float, generator) -> Tensor:
    params = _draw_jitter(images.shape[0], jitter, jitter, jitter, jitter, generator, images)
    return _paste(images, out, patch, params)


def _start(images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    _check_images(images, generator)
    source = images.contiguous()
    return source, source.clone()


def cutpaste_batch(
    images: Tensor,
    *,
    generator: torch.Generator,
    area_ratio: tuple[float, float] = (0.02, 0.15),
    aspect_ratio: tuple[float, float] = (0.3, 3.3),
    jitter: float = 0.1,
    return_masks: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """CutPaste: cut a rectangle, colour-jitter it, paste it at another place of the same image.

    images: ``(B, 3, H, W)`` float in [0, 1]. Per sample: area U(area_ratio) * H * W, aspect ratio
    (rows / columns) log-uniform on (lo, 1) or (1, hi) with probability 1/2 each, source and target
    locations uniform with the patch fully inside, brightness/contrast/saturation/hue jitter up to
    ``jitter`` in a random order. Returns ``(B, 3, H, W)``, plus masks ``(B, 1, H, W)`` bool of the
    pasted pixels when ``return_masks``.
    """
    source, out = _start(images, generator)
    batch, _, height, width = source.shape
    patch = _cutpaste_geometry(batch, height, width, area_ratio, aspect_ratio, generator, source)
    masks = _paste_jittered(source, out, patch, jitter, generator)
    return (out, masks) if return_masks else out


def scar_batch(
    images: Tensor,
    *,
    generator: torch.Generator,
    width: tuple[float, float] = (2.0, 16.0),
    length: tuple[float, float] = (10.0, 25.0),
    rotation: float = 45.0,
    jitter: float = 0.1,
    return_masks: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """CutPaste-Scar: a thin ``length x width`` rectangle rotated by U(-rotation, rotation) degrees.

    images: ``(B, 3, H, W)``. ``width`` and ``length`` are pixel ranges for a 256 px image and are
    scaled by ``H / 256``; the length runs along the rows before rotation. The scar is cut at a random
    place, colour-jittered (up to ``jitter``, random order) and pasted, fully inside, at another.
    Returns ``(B, 3, H, W)``, plus masks ``(B, 1, H, W)`` bool when ``return_masks``.
    """
    source, out = _start(images, generator)
    batch, _, height, size_x = source.shape
    patch = _scar_geometry(batch, height, size_x, width, length, rotation, generator, source)
    masks = _paste_jittered(source, out, patch, jitter, generator)
    return (out, masks) if return_masks else out


# --------------------------------------------------------------------------- training views


def _pre_augment(images: Tensor, config: AugmentConfig, generator: torch.Generator) -> Tensor:
    """Translation by up to ``pre_translate`` px (at 256 px) and colour jitter of the whole image."""
    batch, channels, height, width = images.shape
    x = translate_batch(images, max_shift=config.pre_translate * height / REFERENCE_SIZE, generator=generator)
    amount = config.pre_jitter
    params = _draw_jitter(batch, amount, amount, amount, amount, generator, x)
    return _jitter(x.view(batch, channels, height * width), params).view(batch, channels, height, width)


def make_views(
    images: Tensor, *, variant: str, config: AugmentConfig, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Training views for one step: pre-augmented images first, then their CutPaste versions.

    images: ``(B, 3, H, W)`` float in [0, 1]. Returns views ``(B * K, 3, H, W)`` in [0, 1] and labels
    ``(B * K,)`` int64, in blocks of B: ``normal`` and ``scar`` give ``[x, aug(x)]`` labelled 0, 1;
    ``3way`` gives ``[x, cutpaste(x), scar(x)]`` labelled 0, 1, 2; ``union`` gives ``[x, u(x)]``
    labelled 0, 1 where each sample of ``u`` is CutPaste or scar with probability 1/2.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown CutPaste variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    _check_images(images, generator)
    batch, channels, height, width = images.shape
    x = _pre_augment(images, config, generator)
    kinds = 3 if variant == "3way" else 2
    views = torch.empty((kinds * batch, channels, height, width), dtype=x.dtype, device=x.device)
    for k in range(kinds):
        views[k * batch : (k + 1) * batch] = x

    def normal() -> _Patch:
        return _cutpaste_geometry(batch, height, width, config.area_ratio, config.aspect_ratio, generator, x)

    def scar() -> _Patch:
        return _scar_geometry(
            batch,
            height,
            width,
            config.scar_width,
            config.scar_length,
            config.scar_rotation,
            generator,
            x,
        )

    if variant == "normal":
        patches = [normal()]
    elif variant == "scar":
        patches = [scar()]
    elif variant == "3way":
        patches = [normal(), scar()]
    else:
        first, second = normal(), scar()
        pick = _rand(generator, x, batch) < 0.5
        patches = [_select(pick, first, second)]
    for k, patch in enumerate(patches, start=1):
        _paste_jittered(x, views[k * batch : (k + 1) * batch], patch, config.patch_jitter, generator)
    labels = torch.arange(kinds, device=x.device).repeat_interleave(batch)
    return views, labels


def normalize(images: Tensor) -> Tensor:
    """``(B, 3, H, W)`` in [0, 1] -> ImageNet-normalised (new tensor)."""
    mean = images.new_tensor(IMAGENET_MEAN)[:, None, None]
    std = images.new_tensor(IMAGENET_STD)[:, None, None]
    return (images - mean) / std
