"""Image AUROC of a trained detector on one category, next to the floors it must beat.

    .venv/bin/python bench/quality.py --data ../shared/data/mvtec_ad --category bottle --preset demo

Writes JSON with ``image_auroc`` (trained), ``untrained_auroc`` (same network, random init, same
density), ``pixel_stats_auroc`` (global colour statistics), the paper's number and the wall time.
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
from cutpaste.paper import PAPER_IMAGE_AUROC
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
    trained = evaluate_detector(run.detector, test)
    result = {
        "category": args.category,
        "image_auroc": trained.metrics.image_auroc,
        "untrained_auroc": untrained.metrics.image_auroc,
        "pixel_stats_auroc": pixel.image_auroc,
        "paper_image_auroc": PAPER_IMAGE_AUROC.get(args.category, None),
        "per_defect_auroc": trained.metrics.per_defect_auroc,
        "wall_s": wall,
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
    out = Path(args.out or f"bench/results/quality_{args.category}_{config.preset}.json")
    atomic_write_text(json.dumps(result, indent=2), out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
