"""Hostile image and mask files: every one ends in a DataError naming the file, or in a correct load.

Property tests (hypothesis) cover every mode/format/size the loader may meet; a seeded fuzz loop feeds it
mutated PNG/JPEG/BMP bytes; absurd headers must be refused before any pixel buffer is allocated.
"""

from __future__ import annotations

import io
import os
import random
import resource
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cutpaste.data import images as images_module
from cutpaste.data import list_samples, load_image, load_images, load_mask, load_masks
from cutpaste.errors import DataError

SIZE = 16
FORMATS = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tiff", "WEBP": ".webp"}
# Modes each format can store (PIL refuses the rest at save time, which is not what we test).
MODES = {
    "PNG": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I"],
    "JPEG": ["L", "RGB", "CMYK"],
    "BMP": ["1", "L", "P", "RGB"],
    "TIFF": ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"],
    "WEBP": ["RGB", "RGBA"],
}
_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _encode(arr: np.ndarray, fmt: str, mode: str) -> bytes:
    img = Image.fromarray(arr)
    if mode in ("I;16", "I", "F"):
        img = Image.fromarray(arr[..., 0].astype({"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]))
    elif mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _assert_loads_or_names_file(path: Path) -> bool:
    """True when it loaded (and the tensor is well formed); False when refused with a DataError naming it."""
    try:
        out = load_image(path, SIZE)
    except DataError as exc:
        assert path.name in str(exc), str(exc)
        assert "\n" not in str(exc).strip()
        return False
    assert out.shape == (3, SIZE, SIZE) and out.dtype == torch.uint8
    return True


@st.composite
def _image_files(draw):
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    mode = draw(st.sampled_from(MODES[fmt]))
    width, height = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    arr = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return fmt, mode, arr


@_SETTINGS
@given(case=_image_files())
def test_any_valid_image_of_any_mode_and_size_loads(tmp_path, case):
    fmt, mode, arr = case
    path = tmp_path / f"img-{fmt}-{mode.replace(';', '_')}{FORMATS[fmt]}"
    path.write_bytes(_encode(arr, fmt, mode))
    assert _assert_loads_or_names_file(path), f"a valid {fmt} in mode {mode} of {arr.shape[1]}x{arr.shape[0]}"


@_SETTINGS
@given(data=st.binary(max_size=2048), prefix=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM"]))
def test_arbitrary_bytes_never_crash(tmp_path, data, prefix):
    path = tmp_path / "arbitrary.png"
    path.write_bytes(prefix + data)
    _assert_loads_or_names_file(path)


@_SETTINGS
@given(
    mask=st.integers(0, 2**31 - 1).map(lambda s: np.random.default_rng(s).integers(0, 256, (24, 24), dtype=np.uint8)),
    mode=st.sampled_from(["1", "L", "LA", "P", "RGB", "RGBA", "I;16"]),
)
def test_any_mask_mode_becomes_a_binary_mask(tmp_path, mask, mode):
    img = Image.fromarray(mask) if mode != "I;16" else Image.fromarray(mask.astype(np.uint16) * 257)
    if mode not in ("L", "I;16"):
        img = img.convert(mode)
    img.save(tmp_path / "m.png")
    out = load_mask(tmp_path / "m.png", 12)
    assert out.shape == (12, 12) and out.dtype == torch.bool


def _mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    kind = rng.randrange(5)
    if kind == 0:  # flip a few bytes
        for _ in range(rng.randint(1, 8)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
    elif kind == 1:  # truncate
        del buf[rng.randrange(1, len(buf)) :]
    elif kind == 2:  # insert junk
        at = rng.randrange(len(buf))
        buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif kind == 3:  # overwrite header fields (sizes, depths, offsets live in the first 64 bytes)
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(min(64, len(buf)))] = rng.choice([0, 1, 0x7F, 0x80, 0xFF])
    else:  # duplicate a slice
        a = rng.randrange(len(buf))
        b = min(len(buf), a + rng.randint(1, 256))
        buf[b:b] = buf[a:b]
    return bytes(buf)


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL warns about the TIFF tags it skips
def test_seeded_fuzz_of_png_jpeg_bmp_stays_bounded(tmp_path):
    """1500 mutated files: each loads or is refused with its name; peak memory grows by less than 300 MB."""
    rng = random.Random(1234)
    arr = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    seeds = {
        ".png": _encode(arr, "PNG", "RGB"),
        ".jpg": _encode(arr, "JPEG", "RGB"),
        ".bmp": _encode(arr, "BMP", "RGB"),
        "-p.png": _encode(arr, "PNG", "P"),
        "-16.png": _encode(arr, "PNG", "I;16"),
        ".tiff": _encode(arr, "TIFF", "RGB"),
    }
    before = _maxrss_mb()
    outcomes = {"loaded": 0, "refused": 0}
    for i in range(1500):
        suffix, data = rng.choice(sorted(seeds.items()))
        path = tmp_path / f"fuzz{i:04d}{suffix}"
        path.write_bytes(_mutate(data, rng))
        outcomes["loaded" if _assert_loads_or_names_file(path) else "refused"] += 1
        path.unlink()
    assert outcomes["loaded"] > 50 and outcomes["refused"] > 50, outcomes
    assert _maxrss_mb() - before < 300


def _png_header_only(width: int, height: int, body: bytes = b"\x00" * 16) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(body)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("width,height", [(20000, 20000), (1, 400_000_000), (2**31 - 1, 2**31 - 1)])
def test_absurd_headers_are_refused_before_decoding(tmp_path, width, height):
    path = tmp_path / f"bomb-{width}x{height}.png"
    path.write_bytes(_png_header_only(width, height))
    before = _maxrss_mb()
    with pytest.raises(DataError, match=rf"{path.name}"):
        load_image(path, SIZE)
    with pytest.raises(DataError, match=rf"{path.name}"):
        load_mask(path, SIZE)
    assert _maxrss_mb() - before < 50  # 20000x20000 RGB would be 1.2 GB


def test_tiny_and_lopsided_images_load(tmp_path):
    for w, h in ((1, 1), (1, 300), (300, 1)):
        Image.fromarray(np.full((h, w, 3), 200, np.uint8)).save(tmp_path / f"{w}x{h}.png")
        assert load_image(tmp_path / f"{w}x{h}.png", SIZE).min() == 200


def test_the_pixel_limit_is_checked_on_the_header(tmp_path, monkeypatch):
    """An image one pixel over the limit is refused with its size; one at the limit loads."""
    monkeypatch.setattr(images_module, "MAX_PIXELS", 100)
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "at.png")
    Image.fromarray(np.zeros((10, 11, 3), np.uint8)).save(tmp_path / "over.png")
    assert load_image(tmp_path / "at.png", SIZE).shape == (3, SIZE, SIZE)
    with pytest.raises(DataError, match=r"image too large: .*over\.png is 11x10 \(limit 100 px\)"):
        load_image(tmp_path / "over.png", SIZE)


def test_a_directory_or_unreadable_file_is_a_data_error(tmp_path):
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(DataError, match=r"dir\.png"):
        load_image(tmp_path / "dir.png", SIZE)
    if os.geteuid() == 0:
        return  # root reads any file: the permission case cannot happen
    locked = tmp_path / "locked.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(locked)
    locked.chmod(0)
    with pytest.raises(DataError, match=r"locked\.png"):
        load_image(locked, SIZE)


def test_a_mask_whose_image_is_corrupt_names_the_image(tmp_path, tiny_root):
    samples = list_samples(tiny_root, "widget", "test")
    bad = next(s for s in samples if s.label == 1)
    bad.path.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataError, match=rf"{bad.path.name}"):
        load_masks(samples, 24)


def test_one_bad_file_in_a_category_is_one_error_naming_it(tmp_path, tiny_root):
    """Loading a whole category: the corrupt file is named, the others are not blamed, nothing crashes."""
    paths = [s.path for s in list_samples(tiny_root, "widget", "train")]
    paths[3].write_bytes(paths[3].read_bytes()[:-40])  # truncated in the middle of IDAT
    with pytest.raises(DataError) as caught:
        load_images(paths, 24)
    message = str(caught.value)
    assert paths[3].name in message and str(paths[3].parent) in message
    assert all(p.name not in message for i, p in enumerate(paths) if i != 3)
