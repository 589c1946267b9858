"""Dense scoring throughput: every patch encoded in large batches vs each patch cropped and encoded alone.

    .venv/bin/python bench/localize.py                      # 256 px, 32 px patches, stride 4 (57 x 57)
    .venv/bin/python bench/localize.py --device cuda --images 32

The naive approach (what public reimplementations do: a loop over positions, one crop per forward)
is timed on ``--naive-patches`` positions and scaled to a whole image; both run in the same process,
on the same model and device. Writes JSON with ``img_s`` (ours), ``naive_img_s`` and ``speedup``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from cutpaste.atomic import atomic_write_text
from cutpaste.model.dense import dense_embeddings, upsample_scores
from cutpaste.model.network import CutPasteNet
from cutpaste.model.patches import grid_size
from cutpaste.train.loop import resolve_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def naive_patches_per_second(model: CutPasteNet, image: torch.Tensor, *, patch: int, stride: int, count: int) -> float:
    """One forward per patch, positions in raster order, as the per-patch loops of public code do."""
    device = image.device
    grid = grid_size(image.shape[-1], patch, stride)
    positions = [(r * stride, c * stride) for r in range(grid) for c in range(grid)][:count]
    _sync(device)
    start = time.perf_counter()
    for top, left in positions:
        crop = image[None, :, top : top + patch, left : left + patch]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            model.embed(crop)
    _sync(device)
    return len(positions) / (time.perf_counter() - start)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--stride", type=int, default=4)
    parser.add_argument("--images", type=int, default=4, help="images per timed dense pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--patch-batch-size", type=int, default=2048)
    parser.add_argument("--naive-patches", type=int, default=300, help="positions timed for the naive loop")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", help="JSON path (default bench/results/localize_<device>.json)")
    return parser.parse_args()


def dense_seconds(model: CutPasteNet, images: torch.Tensor, args: argparse.Namespace, device: torch.device) -> list:
    """Seconds of each timed dense pass over ``images`` (after one warm-up pass: allocator, cuDNN autotuning)."""
    grid = grid_size(args.size, args.patch, args.stride)

    def dense_pass() -> None:
        features = dense_embeddings(
            model,
            images,
            image_size=args.size,
            patch_size=args.patch,
            stride=args.stride,
            patch_batch_size=args.patch_batch_size,
            device=device,
        )
        upsample_scores(
            features.norm(dim=-1).view(-1, grid, grid), image_size=args.size, patch_size=args.patch, stride=args.stride
        )

    dense_pass()
    dense_times = []
    for _ in range(args.repeats):
        _sync(device)
        start = time.perf_counter()
        dense_pass()
        _sync(device)
        dense_times.append(time.perf_counter() - start)
    return dense_times


def _result(args: argparse.Namespace, device: torch.device, dense_times: list, naive: list) -> dict:
    grid = grid_size(args.size, args.patch, args.stride)
    img_s = args.images / statistics.median(dense_times)
    naive_img_s = statistics.median(naive) / grid**2
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "image_size": args.size,
        "patch_size": args.patch,
        "stride": args.stride,
        "grid": grid,
        "patches_per_image": grid**2,
        "img_s": img_s,
        "patches_s": img_s * grid**2,
        "naive_img_s": naive_img_s,
        "naive_patches_s": statistics.median(naive),
        "speedup": img_s / naive_img_s,
        "dense_times_s": dense_times,
        "images_per_pass": args.images,
        "naive_patches_timed": args.naive_patches,
    }


def main() -> None:
    args = _parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = CutPasteNet("resnet18", num_classes=3).to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    images = torch.randint(0, 256, (args.images, 3, args.size, args.size), dtype=torch.uint8)
    grid = grid_size(args.size, args.patch, args.stride)
    dense_times = dense_seconds(model, images, args, device)
    one = images[0].to(device).float().div(255)
    naive_patches_per_second(model, one, patch=args.patch, stride=args.stride, count=20)  # warm-up
    naive = [
        naive_patches_per_second(model, one, patch=args.patch, stride=args.stride, count=args.naive_patches)
        for _ in range(args.repeats)
    ]
    result = _result(args, device, dense_times, naive)
    print(
        f"dense scoring {args.size}px, {args.patch}px patches, stride {args.stride} ({grid}x{grid}) on {device}: "
        f"{result['img_s']:.3f} img/s ({result['patches_s']:.0f} patches/s) vs naive per-patch loop "
        f"{result['naive_img_s']:.4f} img/s ({result['naive_patches_s']:.0f} patches/s): {result['speedup']:.1f}x"
    )
    out = Path(args.out or f"bench/results/localize_{device.type}.json")
    atomic_write_text(json.dumps(result, indent=2), out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
