"""Hostile image and mask files: every one ends in a DataError naming the file, or in a correct load.

Property tests (hypothesis) cover every mode/format/size the loader may meet; the seeded fuzz of
bench/fuzz.py feeds it mutated image and mask bytes; absurd headers must be refused before any pixel
buffer is allocated.
"""

from __future__ import annotations

import io
import json
import os
import resource
import struct
import subprocess
import sys
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
REPO = Path(__file__).resolve().parents[2]
FORMATS = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tiff", "WEBP": ".webp"}
# Modes each format can store (PIL refuses the rest at save time, which is not what we test).
MODES = {
    "PNG": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"],  # Pillow cannot write 32-bit "I" as PNG
    "JPEG": ["L", "RGB", "CMYK"],
    "BMP": ["1", "L", "P", "RGB"],
    "TIFF": ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"],
    "WEBP": ["RGB", "RGBA"],
}
# derandomize: the same examples on every run, so a CI result does not depend on the draw.
_SETTINGS = settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


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


@pytest.mark.slow
def test_seeded_fuzz_of_image_and_mask_files_stays_bounded(tmp_path):
    """bench/fuzz.py (10,000 inputs by default) at 1,500: mutated PNG/JPEG/BMP/TIFF/WEBP images and masks each
    load or are refused naming the file, none crashes, and peak memory grows by less than 300 MB."""
    out = tmp_path / "fuzz.json"
    command = [sys.executable, str(REPO / "bench" / "fuzz.py"), "--count", "1500", "--seed", "1234", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["failures"] == [] and sum(report["outcomes"].values()) == 1500
    assert report["outcomes"]["loaded"] > 50 and report["outcomes"]["refused"] > 50, report["outcomes"]
    assert all(sum(c.values()) > 0 for c in report["per_seed_file"].values())


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
