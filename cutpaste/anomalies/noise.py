"""Perlin gradient noise, batched on the generator's device: the shapes of synthetic anomalies.

Used by the validation set's DRAEM-style anomalies (:mod:`cutpaste.anomalies.kinds`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def _fade(t: torch.Tensor) -> torch.Tensor:
    return t * t * t * (t * (t * 6 - 15) + 10)


def perlin_noise(batch: int, size: int, cells: int, generator: torch.Generator) -> torch.Tensor:
    """``(batch, size, size)`` gradient noise in about [-1, 1] with ``cells`` lattice cells per side."""
    device = generator.device
    angles = torch.rand(batch, cells + 1, cells + 1, generator=generator, device=device) * (2 * math.pi)
    gx, gy = angles.cos(), angles.sin()
    pos = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) * (cells / size)
    cell = pos.floor().long().clamp_max(cells - 1)
    frac = pos - cell
    iy, ix = cell[:, None], cell[None, :]
    fy, fx = frac[:, None], frac[None, :]

    def corner(dy: int, dx: int) -> torch.Tensor:
        return gx[:, iy + dy, ix + dx] * (fx - dx) + gy[:, iy + dy, ix + dx] * (fy - dy)

    u, v = _fade(fx), _fade(fy)
    top = torch.lerp(corner(0, 0), corner(0, 1), u)
    bottom = torch.lerp(corner(1, 0), corner(1, 1), u)
    return torch.lerp(top, bottom, v) * math.sqrt(2)


def noise_batch(batch: int, size: int, generator: torch.Generator, choices: Sequence[int]) -> torch.Tensor:
    """Perlin noise whose lattice size is drawn per image from ``choices``; one vectorised call per choice."""
    pick = torch.randint(len(choices), (batch,), generator=generator, device=generator.device)
    out = torch.empty(batch, size, size, device=generator.device)
    for i, cells in enumerate(choices):
        rows = (pick == i).nonzero().flatten()
        noise = perlin_noise(batch, size, cells, generator)  # drawn for all, so the stream does not depend on pick
        out[rows] = noise[rows]
    return out


def perlin_masks(
    batch: int, size: int, generator: torch.Generator, area_ratio: tuple[float, float], cells: Sequence[int] = (2, 4, 8)
) -> torch.Tensor:
    """``(batch, size, size)`` bool: the top ``area`` fraction of a Perlin field, ``area`` drawn per image
    from ``area_ratio``, so a mask is an irregular blob (or several) and never empty."""
    noise = noise_batch(batch, size, generator, cells)
    lo, hi = area_ratio
    area = lo + (hi - lo) * torch.rand(batch, generator=generator, device=generator.device)
    cut = torch.quantile(noise.flatten(1), 1 - area, dim=1).diagonal()
    return noise >= cut.view(batch, 1, 1)
