"""Normal scenes and local defects for the synthetic MVTec-layout data (see :mod:`cutpaste.data.synth`).

Every renderer works in reflectance space, before lighting: it returns a :class:`Scene` whose
``substrate`` is what shows through where material is missing and whose ``support`` marks where
defects may go (the object, or the whole image for textures). Defect painters return a soft
``alpha`` (H, W) and the ``layer`` (H, W, 3) blended in with it; pixels where alpha is zero stay
byte-identical, so the defect mask is exactly ``alpha > 0``. All arrays are float32 in [0, 1].
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

Rng = np.random.Generator


class Scene(NamedTuple):
    image: np.ndarray  # (H, W, 3)
    substrate: np.ndarray  # (H, W, 3)
    support: np.ndarray  # (H, W), 1 where a defect may be placed


def _grid(size: int, cx: float = 0.0, cy: float = 0.0, angle: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (y, x) relative to the centre shifted by (cx, cy), rotated by ``angle``."""
    c = np.arange(size, dtype=np.float32) - (size - 1) / 2
    y, x = np.meshgrid(c - cy, c - cx, indexing="ij")
    ca, sa = np.cos(angle), np.sin(angle)
    return (-x * sa + y * ca).astype(np.float32), (x * ca + y * sa).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _spectrum(size: int, sigma_y: float, sigma_x: float, beta: float) -> np.ndarray:
    """Amplitude filter on the rfft2 grid: a Gaussian low-pass (sigmas in px) times 1/f^(beta/2)."""
    fy, fx = np.fft.fftfreq(size)[:, None], np.fft.rfftfreq(size)[None, :]
    amp = np.exp(-2 * np.pi**2 * ((sigma_y * fy) ** 2 + (sigma_x * fx) ** 2))
    if beta:
        radius = np.hypot(fy, fx)
        radius[0, 0] = 1.0
        amp = amp * radius ** (-beta / 2)
    amp[0, 0] = 0.0
    return amp


def _noise(rng: Rng, size: int, sigma_y: float, sigma_x: float | None = None, beta: float = 0.0) -> np.ndarray:
    """Periodic white noise filtered in Fourier space, zero mean, unit std (H, W).

    ``sigma_*`` low-pass it (anisotropic sigmas stretch it into fibres); ``beta`` > 0 gives 1/f^beta
    fractal noise, the Perlin-like look with one FFT instead of octave loops.
    """
    sigma_x = sigma_y if sigma_x is None else sigma_x
    spectrum = _spectrum(size, float(sigma_y), float(sigma_x), float(beta))
    out = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((size, size), np.float32)) * spectrum, s=(size, size))
    return (out / (out.std() + 1e-8)).astype(np.float32)


def _mix(t: np.ndarray, lo: tuple[float, ...], hi: tuple[float, ...]) -> np.ndarray:
    """Colour ramp: (H, W) in [0, 1] -> (H, W, 3)."""
    t = np.clip(t, 0, 1)[..., None]
    return (np.asarray(lo, np.float32) * (1 - t) + np.asarray(hi, np.float32) * t).astype(np.float32)


def _flat(size: int, rgb: tuple[float, ...]) -> np.ndarray:
    return np.broadcast_to(np.asarray(rgb, np.float32), (size, size, 3)).copy()


# ---------------------------------------------------------------------------------------------- scenes


def weave(rng: Rng, size: int) -> Scene:
    """Over-under woven threads; thread positions wobble so no two images are pixel-aligned."""
    period = size / rng.uniform(8.5, 10.5)
    y, x = _grid(size, *rng.uniform(0, period, 2), rng.uniform(-0.06, 0.06))
    u = x / period + 0.06 * _noise(rng, size, size / 6)
    v = y / period + 0.06 * _noise(rng, size, size / 6)
    over = (np.floor(u) + np.floor(v)) % 2 == 0
    across_u, across_v = np.abs(np.sin(np.pi * u)) ** 0.6, np.abs(np.sin(np.pi * v)) ** 0.6
    height = np.where(over, across_u * (0.55 + 0.45 * across_v), across_v * (0.55 + 0.45 * across_u))
    fibre = np.where(over, _noise(rng, size, size / 30, size / 180), _noise(rng, size, size / 180, size / 30))
    t = 0.15 + 0.75 * height + 0.06 * fibre
    warp = _mix(t, (0.10, 0.12, 0.20), (0.45, 0.55, 0.80))
    weft = _mix(t, (0.12, 0.14, 0.18), (0.60, 0.62, 0.70))
    image = np.where(over[..., None], warp, weft)
    return Scene(image, _flat(size, (0.86, 0.80, 0.62)), np.ones((size, size), np.float32))


def grain(rng: Rng, size: int) -> Scene:
    """Wood: growth rings bent by low-frequency noise, plus fibres stretched along the grain."""
    _, x = _grid(size, 0, 0, rng.uniform(-0.08, 0.08))
    bend = 0.7 * _noise(rng, size, size / 4, size / 8) + 0.15 * _noise(rng, size, size / 25)
    rings = 0.5 + 0.5 * np.sin(2 * np.pi * (x / (size / rng.uniform(9, 10)) + bend))
    fibres = _noise(rng, size, size / 8, size / 160)
    t = 0.2 + 0.55 * rings**2 + 0.12 * fibres
    return Scene(
        _mix(t, (0.62, 0.40, 0.20), (0.30, 0.16, 0.07)),
        _flat(size, (0.93, 0.86, 0.68)),
        np.ones((size, size), np.float32),
    )


def leather(rng: Rng, size: int) -> Scene:
    """Grained leather: fractal noise folded into small cells, stationary at every scale above them."""
    cells = np.abs(_noise(rng, size, size / 45) + 0.35 * _noise(rng, size, size / 90))
    pores = _noise(rng, size, 0, beta=1.2)
    t = 0.05 + 0.85 * np.tanh(1.5 * cells) + 0.06 * pores + 0.04 * _noise(rng, size, size / 6)
    return Scene(
        _mix(t, (0.12, 0.07, 0.05), (0.72, 0.56, 0.43)),
        _flat(size, (0.85, 0.80, 0.70)),
        np.ones((size, size), np.float32),
    )


def _object_pose(rng: Rng, size: int, max_angle: float) -> tuple[np.ndarray, np.ndarray]:
    return _grid(size, *rng.uniform(-0.04, 0.04, 2) * size, rng.uniform(-max_angle, max_angle))


def disc(rng: Rng, size: int) -> Scene:
    """A bottle top seen from above: knurled rim, grooves, raised hub and an embossed mark."""
    y, x = _object_pose(rng, size, 0.35)
    radius = 0.36 * size * rng.uniform(0.97, 1.03)
    r, theta = np.hypot(x, y) / radius, np.arctan2(y, x)
    inside = np.clip((1 - r) * radius + 0.5, 0, 1)
    knurl = 0.5 + 0.5 * np.sin(56 * theta)
    grooves = np.exp(-(((r - 0.72) / 0.035) ** 2)) + np.exp(-(((r - 0.42) / 0.03) ** 2))
    hub = np.clip(1 - r / 0.38, 0, 1)
    mark = (np.abs(y) < 0.07 * radius) & (x > 0.5 * radius) & (x < 0.64 * radius)
    t = 0.5 + 0.22 * hub - 0.35 * grooves + 0.12 * (x + y) / radius * (r > 0.85)
    t = np.where(r > 0.88, 0.35 + 0.35 * knurl, t) - 0.3 * mark + 0.03 * _noise(rng, size, size / 100)
    body = _mix(t, (0.05, 0.12, 0.10), (0.55, 0.85, 0.75))
    background = _mix(0.22 + 0.04 * _noise(rng, size, 0, beta=1.5), (0, 0, 0), (1, 0.95, 0.9))
    image = body * inside[..., None] + background * (1 - inside[..., None])
    return Scene(image, background, (r < 0.97).astype(np.float32))


def bolt(rng: Rng, size: int) -> Scene:
    """A hex bolt head from above: chamfered hexagon, brushed top face and a hexagon socket."""
    angle = rng.uniform(-0.3, 0.3)
    y, x = _object_pose(rng, size, 0.0)
    apothem = 0.33 * size * rng.uniform(0.97, 1.03)
    dirs = angle + np.arange(3) * np.pi / 3
    hex_dist = np.max(np.abs(x[..., None] * np.cos(dirs) + y[..., None] * np.sin(dirs)), axis=-1)
    r, theta = np.hypot(x, y), np.arctan2(y, x)
    outline = np.minimum(apothem - hex_dist, 1.12 * apothem - r)
    inside = np.clip(outline + 0.5, 0, 1)
    chamfer = np.clip(1 - outline / (0.12 * apothem), 0, 1)
    socket = np.clip(0.3 * apothem - hex_dist + 0.5, 0, 1)
    brushed = _noise(rng, size, size / 160, size / 10)
    t = 0.62 + 0.05 * brushed - 0.12 * (np.abs(r - 0.8 * apothem) < 0.025 * apothem)
    t = t + chamfer * 0.25 * np.cos(theta - angle - 2.3) - socket * (0.45 + 0.1 * y / apothem)
    body = _mix(t, (0.05, 0.05, 0.06), (0.95, 0.92, 0.85))
    background = _mix(0.3 + 0.03 * _noise(rng, size, size / 64), (0, 0, 0), (0.8, 0.85, 0.9))
    image = body * inside[..., None] + background * (1 - inside[..., None])
    return Scene(image, background, ((outline > 0.05 * apothem) & (socket < 0.5)).astype(np.float32))


# --------------------------------------------------------------------------------------------- defects


def _polyline_alpha(points: np.ndarray, width: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased stroke along ``points`` (N, 2) as (y, x), per-vertex ``width`` in pixels."""
    c = np.arange(size, dtype=np.float32)
    py, px = np.meshgrid(c, c, indexing="ij")
    alpha = np.zeros((size, size), np.float32)
    for (ay, ax), (by, bx), wa, wb in zip(points[:-1], points[1:], width[:-1], width[1:], strict=True):
        dy, dx = by - ay, bx - ax
        t = np.clip(((py - ay) * dy + (px - ax) * dx) / max(dy * dy + dx * dx, 1e-6), 0, 1)
        dist = np.hypot(py - ay - t * dy, px - ax - t * dx)
        alpha = np.maximum(alpha, np.clip((wa + t * (wb - wa)) / 2 + 0.5 - dist, 0, 1))
    return alpha


def _blob(rng: Rng, size: int, centre: np.ndarray, radius: float) -> np.ndarray:
    """Signed distance in px (negative inside) to an ellipse whose radius wobbles with the angle."""
    y, x = _grid(size, centre[1] - (size - 1) / 2, centre[0] - (size - 1) / 2, rng.uniform(0, np.pi))
    x = x * rng.uniform(0.6, 1.0)
    theta = np.arctan2(y, x)
    wobble = sum(rng.uniform(0, 0.14) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
    return (np.hypot(y, x) - radius * (1 + wobble)).astype(np.float32)


def _contrasting(rng: Rng, scene: Scene, centre: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """One of the two palette colours farthest from the scene around ``centre``: plausible, visible."""
    size = scene.image.shape[0]
    lo, hi = np.clip(centre.astype(int) - size // 10, 0, size), np.clip(centre.astype(int) + size // 10, 0, size)
    local = scene.image[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1].reshape(-1, 3).mean(0)
    far = np.argsort(-np.abs(palette - local).sum(1))[:2]
    return palette[far[rng.integers(2)]]


def scratch(rng: Rng, scene: Scene, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A thin curved line, brighter (bare material) or darker than its surroundings."""
    size = scene.image.shape[0]
    half = rng.uniform(0.16, 0.26) * size
    heading = rng.uniform(0, np.pi)
    d = np.array([np.sin(heading), np.cos(heading)])
    bend = rng.uniform(-0.5, 0.5) * half * np.array([d[1], -d[0]])
    s = np.linspace(-1, 1, 24)[:, None]
    points = centre + s * half * d + (1 - s**2) * bend
    alpha = _polyline_alpha(points, np.full(24, rng.uniform(0.022, 0.034) * size), size)
    tone = rng.uniform(0.88, 1.0) if rng.random() < 0.5 else rng.uniform(0.02, 0.1)
    return alpha, _flat(size, (tone, tone, tone * 0.95))


def crack(rng: Rng, scene: Scene, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A dark jagged random-walk line with a light lip, thinning towards its ends."""
    size = scene.image.shape[0]
    steps = int(rng.integers(12, 18))
    heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.45, steps))
    moves = np.stack([np.sin(heading), np.cos(heading)], 1) * 0.032 * size
    points = np.vstack([np.zeros((1, 2)), np.cumsum(moves, 0)])
    points += centre - points.mean(0)
    taper = np.sin(np.linspace(0.15, np.pi - 0.15, steps + 1))
    width = taper * rng.uniform(0.026, 0.04) * size
    core = _polyline_alpha(points, width, size)[..., None]
    alpha = _polyline_alpha(points, width + 0.016 * size, size)  # a light splintered lip either side
    return alpha, np.clip(scene.image * 1.3 + 0.08, 0, 1) * (1 - core) + scene.image * 0.1 * core


def hole(rng: Rng, scene: Scene, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A dark pit with a lighter raised rim."""
    size = scene.image.shape[0]
    dist = _blob(rng, size, centre, rng.uniform(0.055, 0.09) * size)
    alpha = np.clip(0.5 - dist, 0, 1)
    pit = np.clip(-dist / (0.02 * size) - 1, 0, 1)[..., None]  # the rim is the outer 2 % of the image
    floor = _flat(size, tuple(rng.uniform(0.02, 0.08, 3)))
    return alpha, np.clip(scene.image * 1.35 + 0.1, 0, 1) * (1 - pit) + floor * pit


_STAINS = np.array(
    [(0.85, 0.45, 0.1), (0.15, 0.12, 0.08), (0.3, 0.5, 0.15), (0.55, 0.05, 0.1)],
    np.float32,
)
_LUMPS = np.array(
    [(0.85, 0.8, 0.7), (0.2, 0.15, 0.1), (0.75, 0.5, 0.2), (0.45, 0.5, 0.55), (0.3, 0.4, 0.2)], np.float32
)


def stain(rng: Rng, scene: Scene, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A tinted blob with a darker dried rim that keeps the structure underneath (liquid, rust, oil)."""
    size = scene.image.shape[0]
    dist = _blob(rng, size, centre, rng.uniform(0.07, 0.12) * size)
    alpha = np.clip(0.5 - dist / (0.015 * size), 0, 1) * 0.75
    rim = np.exp(-(((dist + 0.012 * size) / (0.012 * size)) ** 2))[..., None]
    tint = _contrasting(rng, scene, centre, _STAINS)
    return alpha, (scene.image * 0.35 + tint * 0.6) * (1 - 0.45 * rim)


def missing(rng: Rng, scene: Scene, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Material broken away: the substrate shows through, shadowed along the fracture edge."""
    size = scene.image.shape[0]
    dist = _blob(rng, size, centre, rng.uniform(0.06, 0.11) * size)
    shadow = np.exp(dist / (0.015 * size))[..., None]  # 1 at the edge, fading inwards
    ground = scene.substrate * (0.9 + 0.1 * _noise(rng, size, size / 128)[..., None])
    return np.clip(0.5 - dist, 0, 1), ground * (1 - 0.6 * np.clip(shadow, 0, 1))


def extra(rng: Rng, scene: Scene, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A foreign lump (dirt, glue, a chip of something else): a shaded dome of a contrasting colour."""
    size = scene.image.shape[0]
    radius = rng.uniform(0.055, 0.09) * size
    alpha = np.clip(0.5 - _blob(rng, size, centre, radius), 0, 1)
    y, x = _grid(size, centre[1] - (size - 1) / 2, centre[0] - (size - 1) / 2)
    shade = np.clip(1 - (x + y) / (2.5 * radius), 0.4, 1.5)[..., None]
    colour = _contrasting(rng, scene, centre, _LUMPS) * rng.uniform(0.85, 1.15, 3)
    return alpha, np.clip(colour * shade + 0.04 * _noise(rng, size, size / 128)[..., None], 0, 1).astype(np.float32)


DefectPainter = Callable[[Rng, Scene, np.ndarray], tuple[np.ndarray, np.ndarray]]
DEFECTS: dict[str, DefectPainter] = {
    "scratch": scratch,
    "crack": crack,
    "hole": hole,
    "stain": stain,
    "missing": missing,
    "extra": extra,
}
