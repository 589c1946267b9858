"""Decode images and masks of any size and mode into fixed-size uint8 tensors.

A category is decoded once (threads: PIL releases the GIL while decoding) and kept as one
``(N, 3, S, S)`` uint8 tensor, which the training loop moves to the device in one copy.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from cutpaste.data.layout import Sample
from cutpaste.errors import DataError

# Refuse decompression bombs early: 20000 x 20000 = 4e8 px. MVTec images are at most 1024 x 1024.
MAX_PIXELS = 100_000_000
_DECODE_THREADS = 8


def _open(path: Path) -> Image.Image:
    """The decoded image; any failure is a DataError naming the file. The pixel limit is checked on the header."""
    return _read(path, decode=True)


def _size(path: Path) -> tuple[int, int]:
    """(width, height) from the header alone, with the same errors as :func:`_open`."""
    return _read(path, decode=False)


def _read(path: Path | BinaryIO, *, decode: bool, name: str | None = None):
    """``name`` stands for ``path`` in messages when ``path`` is an in-memory stream (an object's bytes)."""
    path_name = name if name is not None else path
    try:
        with Image.open(path) as img:
            width, height = img.size
            # Before load(): an absurd header is refused without allocating its pixel buffer.
            if width * height > MAX_PIXELS:
                raise DataError(f"image too large: {path_name} is {width}x{height} (limit {MAX_PIXELS} px)")
            if not decode:
                return width, height
            img.load()
            return img.copy() if img.mode != "P" else img.convert("RGBA")
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"image not found: {path_name}") from None
    except UnidentifiedImageError:
        # PIL names the stream object (``<_io.BytesIO object at 0x...>``), which says nothing to a user.
        raise DataError(f"cannot decode image {path_name}: not an image in a format PIL reads") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image {path_name}: {exc}") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB of any mode; 16/32-bit greyscale is scaled by its actual range rather than clipped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        # Composite on black so transparent areas do not carry arbitrary hidden colour.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(path: str | Path, size: int) -> torch.Tensor:
    """``(3, size, size)`` uint8, resized with antialiased bilinear filtering."""
    return _fit(_to_rgb(_open(Path(path))), size)


def decode_image(data: bytes, size: int, *, name: str) -> tuple[torch.Tensor, tuple[int, int]]:
    """An object's bytes as :func:`load_image` decodes a file (same limits, same resize), and its original
    (width, height); any failure, an empty object included, is a DataError naming ``name``."""
    if not data:
        raise DataError(f"cannot decode image {name}: empty object (0 bytes)")
    img = _to_rgb(_read(io.BytesIO(data), decode=True, name=name))
    return _fit(img, size), img.size


def _fit(img: Image.Image, size: int) -> torch.Tensor:
    """One resize for training, ``predict`` and batch scoring alike: a score depends on it."""
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def load_mask(path: str | Path, size: int, *, image_path: str | Path | None = None) -> torch.Tensor:
    """``(size, size)`` bool, resized with nearest neighbour so it stays binary.

    With ``image_path`` the mask's original size must match the image's (MVTec masks always do).
    """
    mask = _open(Path(path))
    if image_path is not None:
        width, height = _size(Path(image_path))
        if (width, height) != mask.size:
            raise DataError(
                f"mask {path} is {mask.size[0]}x{mask.size[1]} but its image {image_path} is {width}x{height}"
            )
    arr = np.asarray(mask.convert("L").resize((size, size), Image.Resampling.NEAREST))
    return torch.from_numpy(arr > 127)


def load_images(paths: Sequence[str | Path], size: int) -> torch.Tensor:
    """``(N, 3, size, size)`` uint8 of all paths, decoded in parallel threads."""
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    if not paths:
        return out

    def fill(i: int) -> None:
        out[i] = load_image(paths[i], size)

    with ThreadPoolExecutor(max_workers=min(_DECODE_THREADS, len(paths))) as pool:
        list(pool.map(fill, range(len(paths))))
    return out


def mask_resolution(samples: Sequence[Sample]) -> int | None:
    """The side at which pixel metrics compare maps with masks: the masks' own resolution (the largest
    side among them, read from the headers alone); None when no sample has a mask."""
    sides = [max(_size(Path(s.mask_path))) for s in samples if s.mask_path is not None]
    return max(sides) if sides else None


def load_masks(samples: Sequence[Sample], size: int) -> torch.Tensor | None:
    """``(N, size, size)`` bool; good images are all False. None when no defective sample has a mask."""
    if not any(s.mask_path is not None for s in samples):
        return None
    out = torch.zeros((len(samples), size, size), dtype=torch.bool)

    def fill(i: int) -> None:
        sample = samples[i]
        if sample.mask_path is not None:
            out[i] = load_mask(sample.mask_path, size, image_path=sample.path)

    with ThreadPoolExecutor(max_workers=min(_DECODE_THREADS, len(samples))) as pool:
        list(pool.map(fill, range(len(samples))))
    return out
