"""Deterministic synthetic categories in the MVTec AD layout, for tests and the offline demo.

No real data may be downloaded, yet the method needs categories that behave like MVTec AD: textures
and aligned objects, lighting that varies between normal images, and small local defects with pixel
masks. The lighting variation is deliberately larger than the shift a defect causes in per-image
colour statistics, so a detector must find the local structure, not a global colour change.

Layout written under ``out`` (one directory per category, renamed into place when complete)::

    <category>/train/good/000.png              <category>/test/<defect>/000.png
    <category>/test/good/000.png               <category>/ground_truth/<defect>/000_mask.png
    <category>/.synth.json                     generator parameters; a re-run with the same ones skips
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from PIL import Image

from cutpaste.data import synth_scenes as scenes
from cutpaste.errors import DataError

_VERSION = 1

# name -> (renderer, defect types). Textures and objects alternate, so the first N are a mix.
_CATEGORIES: dict[str, tuple[Callable[[np.random.Generator, int], scenes.Scene], tuple[str, ...]]] = {
    "synth_weave": (scenes.weave, ("hole", "stain", "missing", "crack")),
    "synth_disc": (scenes.disc, ("scratch", "stain", "missing", "extra")),
    "synth_grain": (scenes.grain, ("crack", "hole", "stain", "scratch")),
    "synth_bolt": (scenes.bolt, ("scratch", "crack", "missing", "extra")),
    "synth_noise": (scenes.leather, ("crack", "stain", "missing", "extra")),
}
SYNTH_CATEGORIES: tuple[str, ...] = tuple(_CATEGORIES)
SYNTH_DEFECT_TYPES: Mapping[str, tuple[str, ...]] = MappingProxyType({k: v[1] for k, v in _CATEGORIES.items()})
SYNTH_TEXTURES: frozenset[str] = frozenset({"synth_weave", "synth_grain", "synth_noise"})
SYNTH_OBJECTS: frozenset[str] = frozenset(SYNTH_CATEGORIES) - SYNTH_TEXTURES

# A defect must cover this fraction of the image: visible at 64 px, yet local.
_AREA_RANGE = (0.005, 0.06)


class SynthParamsMismatch(DataError, ValueError):
    """An existing category directory was not written with the requested parameters."""


def generate_dataset(
    out: str | Path,
    *,
    categories: int | Sequence[str] = 4,
    size: int = 128,
    seed: int = 0,
    train_count: int = 60,
    test_good: int = 16,
    test_defect_per_type: int = 6,
    progress: bool = False,
) -> list[str]:
    """Write synthetic categories under ``out``; return their names.

    ``categories`` is a count (the first N of :data:`SYNTH_CATEGORIES`) or a list of names. A category
    already present with identical parameters is skipped; one with other parameters raises ValueError.
    """
    if isinstance(categories, int):
        if not 1 <= categories <= len(SYNTH_CATEGORIES):
            raise ValueError(f"categories: choose 1..{len(SYNTH_CATEGORIES)}, got {categories}")
        names = list(SYNTH_CATEGORIES[:categories])
    else:
        names = list(categories)
        unknown = sorted(set(names) - set(SYNTH_CATEGORIES))
        if unknown:
            raise ValueError(f"unknown synthetic categories {unknown}; known: {list(SYNTH_CATEGORIES)}")
    if size < 32:
        raise ValueError(f"size: at least 32 px, got {size}")
    if min(train_count, test_good, test_defect_per_type) < 1:
        raise ValueError("train_count, test_good and test_defect_per_type must all be at least 1")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        params = {
            "generator": "cutpaste.data.synth",
            "version": _VERSION,
            "category": name,
            "seed": seed,
            "size": size,
            "train_count": train_count,
            "test_good": test_good,
            "test_defect_per_type": test_defect_per_type,
            "defects": list(_CATEGORIES[name][1]),
        }
        wrote = _write_category(root, name, params)
        if progress:
            print(f"synth: {'wrote' if wrote else 'kept'} {root / name}", file=sys.stderr)
    return names


def render_sample(
    category: str, split: str, index: int, *, size: int = 128, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One sample as (clean, image, mask): uint8 (H, W, 3), (H, W, 3) and bool (H, W).

    ``split`` is ``"train"``, ``"good"`` or a defect type; for the first two ``image`` equals ``clean``
    and the mask is empty. Three independent streams (scene, lighting, defect) make ``clean`` the
    exact defect-free twin of ``image``, so the mask is precisely the set of pixels that differ.
    """
    render, defects = _CATEGORIES[category]
    key = [seed, zlib.crc32(category.encode()), zlib.crc32(split.encode()), index]
    scene_rng, light_rng, defect_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(key).spawn(3))
    scene = render(scene_rng, size)
    lighting = _lighting(light_rng, size)
    mask = np.zeros((size, size), bool)
    image = scene.image
    if split not in ("train", "good"):
        if split not in defects:
            raise ValueError(f"{category} has no defect type {split!r}; it has {list(defects)}")
        alpha, layer = _place_defect(defect_rng, scene, split, texture=category in SYNTH_TEXTURES)
        mask = alpha > 0
        image = scene.image * (1 - alpha[..., None]) + layer * alpha[..., None]
    clean = lighting(scene.image)
    return clean, (lighting(image) if mask.any() else clean), mask


def _place_defect(
    rng: np.random.Generator, scene: scenes.Scene, kind: str, *, texture: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Draw defects until one lies on the object and covers a plausible area; return (alpha, layer)."""
    size = scene.image.shape[0]
    candidates = np.argwhere(scene.support > 0.5).astype(np.float32)
    for _ in range(50):
        centre = rng.uniform(0.15, 0.85, 2) * size if texture else candidates[rng.integers(len(candidates))]
        alpha, layer = scenes.DEFECTS[kind](rng, scene, centre)
        kept = alpha * scene.support
        kept[kept < 0.05] = 0
        area = float((kept > 0).mean())
        if _AREA_RANGE[0] <= area <= _AREA_RANGE[1] and kept.sum() >= 0.8 * alpha.sum():
            break
    return kept.astype(np.float32), layer


def _lighting(rng: np.random.Generator, size: int) -> Callable[[np.ndarray], np.ndarray]:
    """A per-image pointwise lighting change: gain, contrast, colour cast, offset, gradient, noise.

    Pointwise and content-independent (the contrast pivot is fixed, not the image mean), so a defect
    changes only the pixels it covers.
    """
    gain = np.exp(rng.uniform(-0.13, 0.13) + rng.uniform(-0.05, 0.05, 3)).astype(np.float32)
    contrast = np.exp(rng.uniform(-0.15, 0.15) + rng.uniform(-0.05, 0.05, 3)).astype(np.float32)
    offset = (rng.uniform(-0.036, 0.036) + rng.uniform(-0.018, 0.018, 3)).astype(np.float32)
    c = (np.arange(size, dtype=np.float32) - (size - 1) / 2) / size
    direction, slope = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.07)
    ramp = (1 + slope * (np.cos(direction) * c[None, :] + np.sin(direction) * c[:, None]))[..., None].astype(np.float32)
    noise = 0.01 * rng.standard_normal((size, size, 3), np.float32)

    def apply(image: np.ndarray) -> np.ndarray:
        # float32 throughout: the clean twin and the defective image must round identically.
        lit = ((image.astype(np.float32) - 0.5) * contrast + 0.5) * gain * ramp + offset + noise
        return np.round(np.clip(lit, 0, 1) * 255).astype(np.uint8)

    return apply


def _write_category(root: Path, name: str, params: dict[str, Any]) -> bool:
    """Render into a hidden sibling directory and rename it into place; False if already present."""
    target = root / name
    if target.exists():
        _check_existing(target, params)
        return False
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=root))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the data set is meant to be shared
        size, seed = params["size"], params["seed"]
        splits = [("train", "train/good", params["train_count"]), ("good", "test/good", params["test_good"])]
        splits += [(d, f"test/{d}", params["test_defect_per_type"]) for d in params["defects"]]
        for split, folder, count in splits:
            (tmp / folder).mkdir(parents=True)
            if split not in ("train", "good"):
                (tmp / "ground_truth" / split).mkdir(parents=True)
            width = max(3, len(str(count - 1)))
            for i in range(count):
                _, image, mask = render_sample(name, split, i, size=size, seed=seed)
                Image.fromarray(image).save(tmp / folder / f"{i:0{width}d}.png", compress_level=1)
                if split not in ("train", "good"):
                    mask_path = tmp / "ground_truth" / split / f"{i:0{width}d}_mask.png"
                    Image.fromarray(mask.astype(np.uint8) * 255).save(mask_path, compress_level=1)
        (tmp / ".synth.json").write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
        try:
            tmp.rename(target)
        except OSError:
            if not target.exists():
                raise
            _check_existing(target, params)  # another process finished first with the same data
            shutil.rmtree(tmp)
            return False
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True


def _check_existing(target: Path, params: dict[str, Any]) -> None:
    try:
        found = json.loads((target / ".synth.json").read_text())
    except (OSError, ValueError):
        raise SynthParamsMismatch(
            f"{target} exists but has no readable .synth.json; it was not written by the generator"
        ) from None
    if found != params:
        diff = {k: (found.get(k), v) for k, v in params.items() if found.get(k) != v}
        raise SynthParamsMismatch(
            f"{target} holds synthetic data with other parameters (found, wanted): {diff}; "
            "delete it or choose another directory"
        )
