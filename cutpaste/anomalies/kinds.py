"""The synthetic anomalies validation scores, in two groups.

- :data:`VOTING_KINDS` decide: every default, every ``image_score=auto`` choice and every champion is
  read from them. They share no generator, shape family or area range with a training view
  (:mod:`cutpaste.anomalies.blobs` says how).
- :data:`REPORTED_KINDS` are scored and shown, never voted: ``perlin`` (a foreign texture in a Perlin
  region) shares CutPaste's area range and DRAEM's Perlin masks (a training view elsewhere), and
  ``stroke`` (a thin curved line) is a cousin of the scar the encoder trains on, so a configuration
  could win them by recognising its own training task.

They live apart from :mod:`cutpaste.evaluation.validation` because a detector uses them too, when it chooses its
own image score (:mod:`cutpaste.scoring.selection`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from cutpaste.anomalies.blobs import dent_anomalies, smudge_anomalies, speckle_anomalies, stain_anomalies
from cutpaste.anomalies.noise import noise_batch, perlin_masks
from cutpaste.anomalies.strokes import stroke_anomalies


def foreign_textures(batch: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``(batch, 3, size, size)`` float textures unrelated to the category: two-colour Perlin patterns."""
    noise = noise_batch(batch, size, generator, (4, 8, 16))
    stripes = noise_batch(batch, size, generator, (16, 32))
    pattern = (0.5 + 0.35 * noise + 0.15 * torch.sin(12 * stripes)).clamp(0, 1).unsqueeze(1)
    colours = torch.rand(batch, 2, 3, 1, 1, generator=generator, device=generator.device)
    return colours[:, 0] * pattern + colours[:, 1] * (1 - pattern)


def perlin_anomalies(
    images: torch.Tensor,
    generator: torch.Generator,
    *,
    area_ratio: tuple[float, float] = (0.02, 0.15),
    opacity: tuple[float, float] = (0.3, 1.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """DRAEM-style anomalies: ``(B, 3, S, S)`` uint8 -> (anomalous uint8 images, ``(B, S, S)`` bool masks).

    The mask is the top ``area`` fraction of a Perlin noise field (so it is never empty), ``area`` drawn
    per image from ``area_ratio``; inside it a foreign texture is blended in with a drawn opacity.
    """
    b, _, h, w = images.shape
    if h != w:
        raise ValueError(f"perlin_anomalies expects square images, got {h}x{w}")
    device = generator.device
    masks = perlin_masks(b, h, generator, area_ratio)
    beta = opacity[0] + (opacity[1] - opacity[0]) * torch.rand(b, 1, 1, 1, generator=generator, device=device)
    texture = foreign_textures(b, h, generator)
    x = images.to(device).float().div(255)
    m = masks.unsqueeze(1).float()
    out = x * (1 - beta * m) + texture * (beta * m)
    return out.mul(255).round().clamp(0, 255).to(torch.uint8), masks


Kind = Callable[[torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
# Each base image gives one anomaly of each kind per draw; validation reports the AUROC per kind too.
VOTING_KINDS: dict[str, Kind] = {
    "dent": dent_anomalies,
    "smudge": smudge_anomalies,
    "stain": stain_anomalies,
    "speckle": speckle_anomalies,
}
REPORTED_KINDS: dict[str, Kind] = {"perlin": perlin_anomalies, "stroke": stroke_anomalies}
ANOMALY_KINDS: dict[str, Kind] = {**VOTING_KINDS, **REPORTED_KINDS}
