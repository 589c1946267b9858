"""Hostile input at scale: mutated image and mask files (PNG, JPEG, BMP, TIFF, WEBP), each of which must
load into a well-formed tensor or be refused with a one-line DataError naming the file; never a crash, a
hang or a memory blow-up.

    .venv/bin/python bench/fuzz.py                    # 10,000 inputs, results in bench/results/fuzz.json
    .venv/bin/python bench/fuzz.py --count 500 --out /tmp/fuzz.json

Exits 1 when any input ended otherwise (the offending bytes are kept next to --out for reproduction).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import resource
import statistics
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cutpaste.atomic import atomic_write_text
from cutpaste.data import load_image, load_mask
from cutpaste.errors import DataError

RESULTS = Path(__file__).resolve().parent / "results" / "fuzz.json"
SIZE = 16
MEMORY_LIMIT_MB = 300  # peak RSS growth a whole run may cause


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def seed_files() -> dict[str, tuple[str, bytes]]:
    """name -> (kind, bytes): valid images in several formats and modes, and masks, to mutate."""
    arr = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    rgb = Image.fromarray(arr)
    mask = Image.fromarray((arr[..., 0] > 128).astype(np.uint8) * 255)
    return {
        "rgb.png": ("image", _encode(rgb, "PNG")),
        "palette.png": ("image", _encode(rgb.convert("P"), "PNG")),
        "rgba.png": ("image", _encode(rgb.convert("RGBA"), "PNG")),
        "16bit.png": ("image", _encode(Image.fromarray(arr[..., 0].astype(np.uint16) * 257), "PNG")),
        "rgb.jpg": ("image", _encode(rgb, "JPEG")),
        "cmyk.jpg": ("image", _encode(rgb.convert("CMYK"), "JPEG")),
        "rgb.bmp": ("image", _encode(rgb, "BMP")),
        "rgb.tiff": ("image", _encode(rgb, "TIFF")),
        "rgb.webp": ("image", _encode(rgb, "WEBP")),
        "mask.png": ("mask", _encode(mask, "PNG")),
        "mask1.png": ("mask", _encode(mask.convert("1"), "PNG")),
        "mask.tiff": ("mask", _encode(mask, "TIFF")),
        "mask.bmp": ("mask", _encode(mask, "BMP")),
    }


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One of five damages a file meets in the wild: flipped bytes, truncation, inserted junk, broken header
    fields (sizes, depths and offsets live in the first 64 bytes), a duplicated slice."""
    buf = bytearray(data)
    kind = rng.randrange(5)
    if kind == 0:
        for _ in range(rng.randint(1, 8)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
    elif kind == 1:
        del buf[rng.randrange(1, len(buf)) :]
    elif kind == 2:
        at = rng.randrange(len(buf))
        buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif kind == 3:
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(min(64, len(buf)))] = rng.choice([0, 1, 0x7F, 0x80, 0xFF])
    else:
        a = rng.randrange(len(buf))
        b = min(len(buf), a + rng.randint(1, 256))
        buf[b:b] = buf[a:b]
    return bytes(buf)


def check_one(path: Path, kind: str) -> str:
    """'loaded', 'refused', or a description of what went wrong."""
    try:
        out = load_image(path, SIZE) if kind == "image" else load_mask(path, SIZE)
    except DataError as exc:
        message = str(exc).strip()
        if path.name not in message or "\n" in message:
            return f"refused without naming the file on one line: {message[:200]!r}"
        return "refused"
    except Exception as exc:  # the point of the fuzz: anything else is a bug
        return f"crashed: {type(exc).__name__}: {str(exc)[:200]}"
    expected = ((3, SIZE, SIZE), torch.uint8) if kind == "image" else ((SIZE, SIZE), torch.bool)
    if (tuple(out.shape), out.dtype) != expected:
        return f"malformed tensor {tuple(out.shape)} {out.dtype}"
    return "loaded"


def run(count: int, seed: int, keep: Path) -> dict:
    rng = random.Random(seed)
    seeds = sorted(seed_files().items())
    outcomes: Counter[str] = Counter()
    per_format: dict[str, Counter[str]] = {}
    failures: list[dict] = []
    seconds: list[float] = []
    before = _maxrss_mb()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cutpaste-fuzz-") as scratch, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL warns about the TIFF tags and EXIF it skips
        for i in range(count):
            name, (kind, data) = rng.choice(seeds)
            path = Path(scratch) / f"fuzz{i:05d}-{name}"
            path.write_bytes(mutate(data, rng))
            tick = time.perf_counter()
            outcome = check_one(path, kind)
            seconds.append(time.perf_counter() - tick)
            short = outcome if outcome in ("loaded", "refused") else "failed"
            outcomes[short] += 1
            per_format.setdefault(name, Counter())[short] += 1
            if short == "failed":
                keep.mkdir(parents=True, exist_ok=True)
                kept = keep / path.name
                kept.write_bytes(path.read_bytes())
                failures.append({"file": str(kept), "kind": kind, "outcome": outcome})
            path.unlink()
    return {
        "benchmark": "mutated image and mask files through cutpaste.data.load_image / load_mask",
        "count": count,
        "seed": seed,
        "outcomes": dict(outcomes),
        "per_seed_file": {k: dict(v) for k, v in sorted(per_format.items())},
        "failures": failures[:50],
        "wall_s": round(time.perf_counter() - started, 2),
        "median_ms_per_input": round(1000 * statistics.median(seconds), 3),
        "max_ms_per_input": round(1000 * max(seconds), 1),
        "peak_rss_growth_mb": round(_maxrss_mb() - before, 1),
        "memory_limit_mb": MEMORY_LIMIT_MB,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="mutated inputs (default 10000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error(f"--count must be >= 1, got {args.count}")
    torch.set_num_threads(1)
    result = run(args.count, args.seed, keep=args.out.with_suffix(".failures"))
    atomic_write_text(json.dumps(result, indent=2) + "\n", args.out)
    print(json.dumps({k: v for k, v in result.items() if k not in ("per_seed_file", "failures")}, indent=2))
    ok = not result["failures"] and result["peak_rss_growth_mb"] < MEMORY_LIMIT_MB
    if not ok:
        failed = result["outcomes"].get("failed", 0)
        print(f"fuzz: {failed} inputs failed, peak memory grew {result['peak_rss_growth_mb']} MB; see {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
