import numpy as np
import pytest
import torch
from PIL import Image

from cutpaste.data import list_samples, load_image, load_images, load_mask, load_masks
from cutpaste.errors import DataError


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "LA", "P", "I;16", "I", "CMYK", "1"])
def test_any_mode_becomes_rgb_uint8(tmp_path, mode):
    arr = np.linspace(0, 255, 40 * 30, dtype=np.float64).reshape(30, 40)
    rgb = Image.fromarray(np.stack([arr] * 3, -1).astype(np.uint8))
    if mode == "I;16":
        img = Image.fromarray((arr * 257).astype(np.uint16))
    elif mode == "I":
        img = Image.fromarray((arr * 100).astype(np.int32))
    else:
        img = rgb.convert(mode)
    path = tmp_path / ("img.tiff" if mode in ("CMYK", "I") else "img.png")
    img.save(path)
    out = load_image(path, 32)
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
    assert out.float().std() > 10  # the gradient survived: nothing was clipped to a constant


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(tmp_path / "white.png")
    assert load_image(tmp_path / "white.png", 8).min() == 255


def test_truncated_and_garbage_files_name_the_file(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 7).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"definitely not an image")
    for bad in (truncated, garbage):
        with pytest.raises(DataError, match=bad.name):
            load_image(bad, 32)
    with pytest.raises(DataError, match=r"truncated\.png"):
        load_images([good, truncated], 32)
    with pytest.raises(DataError, match="not found"):
        load_image(tmp_path / "missing.png", 32)


def test_masks_stay_binary_and_sizes_must_match(tmp_path, tiny_root):
    mask = np.zeros((48, 48), np.uint8)
    mask[::3, ::3] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    out = load_mask(tmp_path / "m.png", 20)
    assert out.dtype == torch.bool and out.any() and not out.all()
    samples = list_samples(tiny_root, "widget", "test")
    masks = load_masks(samples, 24)
    assert masks.shape == (6, 24, 24)
    assert not masks[[s.label == 0 for s in samples]].any() and masks[[s.label == 1 for s in samples]].any()
    bad = next(s for s in samples if s.label == 1)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(bad.mask_path)
    with pytest.raises(DataError, match=r"mask .*_mask.png is 10x10 but its image .* is 48x48"):
        load_masks(samples, 24)
