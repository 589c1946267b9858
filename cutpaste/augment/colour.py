"""Colour jitter for whole batches on the training device: torchvision's ColorJitter, one draw per sample.

Brightness, contrast, saturation and hue are applied in a random order per sample, as torchvision's
``ColorJitter`` does, but as tensor stages over the whole batch (on CPU over cache-sized pixel chunks):
no Python loop over samples. A pasted patch is jittered on its own pixels only (``weight``), so the
jitter touches at most ``area_ratio[1]`` of the image (:mod:`cutpaste.augment.ops`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

# ITU-R 601 luma weights, the ones torchvision uses for grayscale, contrast and saturation.
_GRAY = (0.2989, 0.587, 0.114)
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = range(4)
# Pixels per CPU chunk summed over the samples: a stage's temporaries stay in cache, the Python
# overhead per chunk stays small.
_CPU_CHUNK = 1 << 18


class Jitter(NamedTuple):
    """factors ``(n, 4)``: brightness/contrast/saturation factors and hue shift; order ``(n, 4)`` int64:
    the op each sample applies at each stage; enabled: ops with a non-zero range (others are skipped)."""

    factors: Tensor
    order: Tensor
    enabled: tuple[bool, bool, bool, bool]


def check_images(images: Tensor, generator: torch.Generator) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"expected float images in [0, 1], got dtype {images.dtype}")
    if generator.device.type != images.device.type:
        raise ValueError(f"generator is on {generator.device}, images are on {images.device}")


def uniform(generator: torch.Generator, like: Tensor, *shape: int) -> Tensor:
    """Uniform [0, 1) float32 parameters (whatever the image dtype) on ``like``'s device."""
    return torch.rand(shape, generator=generator, device=like.device, dtype=torch.float32)


def draw_jitter(n: int, amounts: tuple[float, ...], generator: torch.Generator, like: Tensor) -> Jitter:
    """ColorJitter parameters for ``n`` samples: factors U[max(0, 1 - v), 1 + v], hue shift U[-h, h]."""
    u = uniform(generator, like, n, 4)
    ranges = [(max(0.0, 1.0 - v), 1.0 + v) for v in amounts[:3]] + [(-amounts[3], amounts[3])]
    factors = torch.stack([lo + (hi - lo) * u[:, k] for k, (lo, hi) in enumerate(ranges)], dim=1)
    order = uniform(generator, like, n, 4).argsort(dim=1)  # a uniformly random permutation per sample
    return Jitter(factors, order, tuple(v > 0 for v in amounts))


def runs_on_cpu(x: Tensor) -> bool:
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


def _affine_stage(op: Tensor, jitter: Jitter, sums: Tensor | None, count: Tensor | int) -> _Affine:
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


def apply_jitter(x: Tensor, jitter: Jitter, weight: Tensor | None = None, repeats: Tensor | None = None) -> Tensor:
    """Applies the four ops in each sample's own order to ``x`` ``(n, 3, L)``, in place; returns ``x``.
    Brightness, contrast and saturation are each ``clamp(alpha * x + gamma * gray(x) + delta)``: one stage
    applies whichever each sample drew with the same ops. Hue runs on the samples that drew it: indexed on
    CPU, computed for all and selected elsewhere (no host sync). On CPU a stage walks cache-sized chunks,
    summing them for the next contrast mean, which skips pixels with ``weight`` ``(n, L)`` 0 and the last
    ``repeats`` ``(n,)`` ones (padding copies of pixel 0)."""
    factors, order, (use_b, use_c, use_s, use_h) = jitter
    affine, on_cpu, length = use_b or use_c or use_s, runs_on_cpu(x), x.shape[2]
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
    check_images(images, generator)
    amounts = (brightness, contrast, saturation, hue)
    if min(amounts) < 0 or hue > 0.5:
        raise ValueError(f"jitter ranges must be >= 0 and hue <= 0.5, got {amounts}")
    batch, channels, height, width = images.shape
    x = images.clone(memory_format=torch.contiguous_format).view(batch, channels, height * width)
    return apply_jitter(x, draw_jitter(batch, amounts, generator, images)).view(batch, channels, height, width)
