"""Image AUROC of a trained detector on one category, next to the floors it must beat.

    .venv/bin/python bench/quality.py --data ../shared/data/mvtec_ad --category bottle --preset demo

Writes JSON with ``image_auroc`` (trained), ``untrained_auroc`` (same network, random init, same
density), ``pixel_stats_auroc`` (global colour statistics), the paper's number and the wall time; with
masks also ``pixel_auroc`` and ``aupro`` (GradCAM for the image-level model, dense maps for a patch
model: ``--set patch_size=32``), trained and untrained, next to the paper's pixel AUROC.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cutpaste.atomic import atomic_write_text
from cutpaste.baselines import pixel_statistics_scores, untrained_detector
from cutpaste.cli import build_config
from cutpaste.data import list_samples, load_images
from cutpaste.evaluate import evaluate_detector
from cutpaste.metrics import image_metrics
from cutpaste.paper import PAPER_IMAGE_AUROC, PAPER_PIXEL_AUROC
from cutpaste.workflow import train_category


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--category", required=True)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--config")
    for flag in ("seed", "steps", "size", "batch_size", "head_depth", "checkpoint_every"):
        parser.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=int)
    for flag in ("variant", "backbone", "pretrained"):
        parser.add_argument(f"--{flag}", dest=flag)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--set", action="append")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", help="JSON path (default bench/results/quality_<category>_<preset>.json)")
    args = parser.parse_args()
    config = build_config(args)
    train = list_samples(args.data, args.category, "train")
    test = list_samples(args.data, args.category, "test")
    train_images = load_images([s.path for s in train], config.image_size)
    test_images = load_images([s.path for s in test], config.image_size)
    labels, defects = [s.label for s in test], [s.defect_type for s in test]

    pixel = image_metrics(labels, pixel_statistics_scores(train_images, test_images).tolist(), defects)
    untrained = evaluate_detector(untrained_detector(config, train_images, category=args.category), test)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run = train_category(config, args.data, args.category, tmp, device=args.device)
    wall = time.perf_counter() - started
    started = time.perf_counter()
    trained = evaluate_detector(run.detector, test)
    eval_wall = time.perf_counter() - started
    result = {
        "category": args.category,
        "image_auroc": trained.metrics.image_auroc,
        "untrained_auroc": untrained.metrics.image_auroc,
        "pixel_stats_auroc": pixel.image_auroc,
        "paper_image_auroc": PAPER_IMAGE_AUROC.get(args.category, None),
        "per_defect_auroc": trained.metrics.per_defect_auroc,
        "pixel_auroc": trained.pixel.pixel_auroc if trained.pixel else None,
        "aupro": trained.pixel.aupro if trained.pixel else None,
        "untrained_pixel_auroc": untrained.pixel.pixel_auroc if untrained.pixel else None,
        "untrained_aupro": untrained.pixel.aupro if untrained.pixel else None,
        "paper_pixel_auroc": PAPER_PIXEL_AUROC.get(args.category, None),
        "maps": "dense" if config.patch_size else "gradcam",
        "wall_s": wall,
        "eval_wall_s": eval_wall,
        "train_img_s": run.training.history[-1]["img_s"] if run.training.history else None,
        "final_loss": run.detector.meta["final_loss"],
        "final_accuracy": run.detector.meta["final_accuracy"],
        "config": config.to_dict(),
        "device": str(run.detector.device),
        "threads": torch.get_num_threads(),
    }
    print(
        f"{args.category} ({config.preset}: {config.steps} steps, {config.image_size}px, batch "
        f"{config.batch_size}x{config.num_classes}): trained {result['image_auroc']:.4f}, untrained "
        f"{result['untrained_auroc']:.4f}, pixel statistics {result['pixel_stats_auroc']:.4f}; {wall:.0f}s"
    )
    if result["pixel_auroc"] is not None:
        print(
            f"  {result['maps']} maps: pixel AUROC {result['pixel_auroc']:.4f} (untrained "
            f"{result['untrained_pixel_auroc']:.4f}), AUPRO {result['aupro']:.4f} (untrained "
            f"{result['untrained_aupro']:.4f}); paper pixel AUROC {result['paper_pixel_auroc']}; eval {eval_wall:.0f}s"
        )
    kind = f"_patch{config.patch_size}" if config.patch_size else ""
    out = Path(args.out or f"bench/results/quality_{args.category}_{config.preset}{kind}.json")
    atomic_write_text(json.dumps(result, indent=2), out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
