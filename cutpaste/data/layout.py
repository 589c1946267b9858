"""The MVTec AD folder layout: discover categories and list their samples as typed records.

<root>/<category>/train/good/*.png
<root>/<category>/test/good/*.png
<root>/<category>/test/<defect>/*.png
<root>/<category>/ground_truth/<defect>/<name>_mask.png
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cutpaste.errors import DataError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})

MVTEC_TEXTURES = frozenset({"carpet", "grid", "leather", "tile", "wood"})
MVTEC_OBJECTS = frozenset(
    {"bottle", "cable", "capsule", "hazelnut", "metal_nut", "pill", "screw", "toothbrush", "transistor", "zipper"}
)

Split = Literal["train", "test"]


@dataclass(frozen=True)
class Sample:
    """One image of a category. ``label`` is 0 for good, 1 for defective."""

    path: Path
    split: Split
    label: int
    defect_type: str
    mask_path: Path | None = None

    @property
    def name(self) -> str:
        return self.path.stem


class MissingMaskWarning(UserWarning):
    """A defective test image has no ground-truth mask: image metrics still work, pixel metrics skip it."""


def category_kind(category: str) -> Literal["texture", "object"]:
    """Texture or object, by the paper's grouping; unknown categories count as objects."""
    if category in MVTEC_TEXTURES:
        return "texture"
    if category in MVTEC_OBJECTS:
        return "object"
    from cutpaste.data.synth import SYNTH_TEXTURES  # the generator knows which of its categories are textures

    return "texture" if category in SYNTH_TEXTURES else "object"


def discover_categories(root: str | Path) -> list[str]:
    """Every folder under ``root`` that has a ``train/good`` subfolder, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data directory not found: {root}")
    found = sorted(p.name for p in root.iterdir() if (p / "train" / "good").is_dir())
    if not found:
        raise DataError(f"no category under {root} (expected <category>/train/good/ folders)")
    return found


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def category_dir(root: str | Path, category: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data directory not found: {root}")
    path = root / category
    if not path.is_dir():
        known = ", ".join(p.name for p in sorted(root.iterdir()) if p.is_dir()) or "none"
        raise DataError(f"category {category!r} not found under {root} (found: {known})")
    return path


def list_samples(root: str | Path, category: str, split: Split) -> list[Sample]:
    """All samples of one split. Train holds only good images; test holds good and defective ones.

    A defective image without its ``<name>_mask.png`` is kept with ``mask_path=None``; one
    :class:`MissingMaskWarning` per call counts them and names the first few (a dataset with image-level
    labels only, such as ELPV, has a hundred of them: one line, not a hundred).
    """
    base = category_dir(root, category)
    split_dir = base / split
    if not split_dir.is_dir():
        raise DataError(f"missing folder {split_dir}")
    if split == "train":
        good = split_dir / "good"
        if not good.is_dir():
            raise DataError(f"missing folder {good}")
        samples = [Sample(p, "train", 0, "good") for p in _images_in(good)]
        if not samples:
            raise DataError(f"no training images in {good}")
        return samples

    samples: list[Sample] = []
    unmasked: list[tuple[Path, Path]] = []
    for defect_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        defect = defect_dir.name
        for path in _images_in(defect_dir):
            if defect == "good":
                samples.append(Sample(path, "test", 0, "good"))
                continue
            mask = base / "ground_truth" / defect / f"{path.stem}_mask.png"
            if not mask.is_file():
                unmasked.append((path, mask))
                mask = None
            samples.append(Sample(path, "test", 1, defect, mask))
    if not samples:
        raise DataError(f"no test images under {split_dir}")
    if unmasked:
        warnings.warn(_missing_masks_message(unmasked), MissingMaskWarning, stacklevel=2)
    return samples


def _missing_masks_message(unmasked: list[tuple[Path, Path]], named: int = 3) -> str:
    """One line: how many defective images lack a mask, the first ``named`` of them and where each was looked for."""
    shown = "; ".join(f"{path} (expected {mask})" for path, mask in unmasked[:named])
    more = f"; and {len(unmasked) - named} more" if len(unmasked) > named else ""
    count = f"{len(unmasked)} defective image{'s' if len(unmasked) > 1 else ''}"
    return f"no mask for {count}, pixel metrics skip {'them' if len(unmasked) > 1 else 'it'}: {shown}{more}"
