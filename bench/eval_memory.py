"""Peak memory of ``cutpaste evaluate`` with 1024 x 1024 masks, at 50 and at 200 test images.

    .venv/bin/python bench/eval_memory.py                 # writes bench/results/eval_memory.json
    .venv/bin/python bench/eval_memory.py --counts 50 200 --size 128

Pixel metrics are computed at the masks' resolution (MVTec AD ships 1024 x 1024 masks for several
categories). Holding every upsampled pixel at once took ~150 bytes per mask pixel (12 GB for 77 M
pixels); streamed image by image, the peak must not grow with the number of images. The bench writes
a synthetic category of 1024 px images with masks (smooth random colour fields, dark elliptic defects),
trains a detector for a few steps (the point is the evaluation, not the detector), then runs
``cutpaste evaluate`` once per count as a child process and reads that child's own peak resident set
(``os.wait4``) and wall time. Its temporary data is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cutpaste.atomic import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results" / "eval_memory.json"
CLI = "import sys; from cutpaste.cli import main; raise SystemExit(main(sys.argv[1:]))"


def _picture(rng: np.random.Generator, side: int) -> Image.Image:
    """A smooth random colour field (compresses well, decodes fast), ``side`` x ``side`` RGB."""
    coarse = rng.integers(70, 190, size=(8, 8, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((side, side), Image.Resampling.BICUBIC)


def _defect(rng: np.random.Generator, image: Image.Image) -> tuple[Image.Image, Image.Image]:
    """The image with 1-3 dark ellipses, and their mask (``L``, 255 inside)."""
    side = image.size[0]
    mask = Image.new("L", image.size, 0)
    draw, shade = ImageDraw.Draw(mask), ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 4))):
        w, h = (int(v) for v in rng.integers(side // 40, side // 8, 2))
        x, y = (int(v) for v in rng.integers(0, side - max(w, h), 2))
        draw.ellipse((x, y, x + w, y + h), fill=255)
        shade.ellipse((x, y, x + w, y + h), fill=(20, 20, 20))
    return image, mask


def write_category(root: Path, name: str, *, side: int, train: int, test: int, seed: int = 0) -> Path:
    """``<root>/<name>`` in the MVTec layout: ``train`` good images, ``test`` half good, half defective."""
    rng = np.random.default_rng(seed)
    base = root / name
    for folder in ("train/good", "test/good", "test/blob", "ground_truth/blob"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    for i in range(train):
        _picture(rng, side).save(base / "train/good" / f"{i:03d}.png")
    for i in range(test):
        if i % 2 == 0:
            _picture(rng, side).save(base / "test/good" / f"{i // 2:03d}.png")
            continue
        image, mask = _defect(rng, _picture(rng, side))
        image.save(base / "test/blob" / f"{i // 2:03d}.png")
        mask.save(base / "ground_truth/blob" / f"{i // 2:03d}_mask.png")
    return base


def run_child(args: list[str]) -> tuple[float, float]:
    """Runs the CLI in a child process; its own peak resident set in MB and its wall time in seconds."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert child.stdout is not None
    with child.stdout:
        output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage, not every child's maximum
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"cutpaste {args[0]} failed:\n{output.decode(errors='replace')}")
    return usage.ru_maxrss / 1024.0, wall  # Linux: KiB


def measure(work: Path, counts: list[int], *, side: int, size: int, steps: int) -> list[dict]:
    """Trains once on the largest category, evaluates every count; one row per count."""
    for count in counts:
        write_category(work / "data", f"eval_{count}", side=side, train=16, test=count, seed=count)
    model = work / "model"
    largest = f"eval_{max(counts)}"
    train = ["train", "--data", str(work / "data"), "--category", largest, "--out", str(model), "--preset", "ci"]
    run_child([*train, "--steps", str(steps), "--size", str(size), "--device", "cpu", "--no-progress"])
    rows = []
    for count in counts:
        report = work / f"eval_{count}.json"
        evaluate = ["evaluate", "--model", str(model), "--data", str(work / "data"), "--category", f"eval_{count}"]
        peak_mb, wall = run_child([*evaluate, "--json", str(report), "--device", "cpu"])
        metrics = json.loads(report.read_text())
        rows.append(
            {
                "test_images": count,
                "mask_pixels": count * side * side,
                "peak_rss_mb": round(peak_mb, 1),
                "wall_s": round(wall, 2),
                "pixel_auroc": metrics.get("pixel_auroc"),
                "aupro": metrics.get("aupro"),
                "defect_regions": metrics.get("defect_regions"),
            }
        )
        print(f"{count:>6} images  peak RSS {peak_mb:8.1f} MB  {wall:7.1f} s", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[50, 200], help="test images per run")
    parser.add_argument("--side", type=int, default=1024, help="image and mask side in pixels")
    parser.add_argument("--size", type=int, default=128, help="the detector's input size (--size of train)")
    parser.add_argument("--steps", type=int, default=2, help="training steps (the detector is not the point)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cutpaste-eval-memory-"))
    try:
        rows = measure(work, sorted(args.counts), side=args.side, size=args.size, steps=args.steps)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'images':>6}  {'mask px':>12}  {'peak RSS MB':>11}  {'wall s':>7}  {'pixel AUROC':>11}  {'AUPRO':>6}")
    for r in rows:
        print(
            f"{r['test_images']:>6}  {r['mask_pixels']:>12,}  {r['peak_rss_mb']:>11.1f}  {r['wall_s']:>7.1f}  "
            f"{r['pixel_auroc']:>11.4f}  {r['aupro']:>6.4f}"
        )
    result = {
        "command": "python bench/eval_memory.py " + " ".join(sys.argv[1:]),
        "what": "peak resident memory of `cutpaste evaluate` (a child process, os.wait4) with masks at full size",
        "side_px": args.side,
        "detector": {"preset": "ci", "image_size": args.size, "steps": args.steps, "maps": "auto"},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "rows": rows,
        "peak_ratio_largest_to_smallest": round(rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"], 3),
    }
    atomic_write_text(json.dumps(result, indent=2) + "\n", args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
