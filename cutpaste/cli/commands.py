"""One handler per ``cutpaste`` command (and the config the flags build); each imports what it needs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cutpaste.errors import ConfigError, CutPasteError
from cutpaste.progress import show_progress

# Flag -> config field; every flag here is a field of TrainConfig.
_FIELD_FLAGS: dict[str, tuple[str, type]] = {
    "seed": ("seed", int),
    "steps": ("steps", int),
    "size": ("image_size", int),
    "batch_size": ("batch_size", int),
    "variant": ("variant", str),
    "backbone": ("backbone", str),
    "pretrained": ("pretrained", str),
    "lr": ("learning_rate", float),
    "head_depth": ("head_depth", int),
    "checkpoint_every": ("checkpoint_every", int),
    "patch_size": ("patch_size", int),
    "stride": ("patch_stride", int),
    "local_density": ("local_density", str),
    "image_score": ("image_score", str),
    "target_fpr": ("target_fpr", float),
}


def _progress(args: argparse.Namespace) -> bool:
    return show_progress(getattr(args, "no_progress", False))


def build_config(args: argparse.Namespace):
    """Preset (or --config file), then explicit flags, then --set overrides."""
    from cutpaste.presets import load_config, parse_overrides, preset

    config = load_config(args.config, base=preset(args.preset)) if args.config else preset(args.preset)
    changes = {
        field: kind(getattr(args, flag))
        for flag, (field, kind) in _FIELD_FLAGS.items()
        if getattr(args, flag, None) is not None  # scripts may define only some of the flags
    }
    changes.update(parse_overrides(args.set or []))
    return config.override(changes, source="command line") if changes else config.validate()


def _cmd_train(args: argparse.Namespace) -> int:
    from cutpaste.workflow import evaluate_category, train_category

    config = build_config(args)
    data = _local_data(args, [args.category])
    run = train_category(
        config,
        data,
        args.category,
        args.out,
        device=args.device,
        restart=args.restart,
        overwrite=args.overwrite,
        progress=_progress(args),
    )
    meta = run.detector.meta
    print(
        f"trained {args.category}: {run.training.steps_done} steps in {meta['train_wall_s']:.1f}s, "
        f"final loss {meta['final_loss']:.4f}, accuracy {meta['final_accuracy']:.3f}; "
        f"threshold {run.detector.threshold:.4f}; saved {run.out_dir}"
    )
    selection = meta.get("image_score_selection")
    if selection:
        ranked = ", ".join(
            f"{name} {auc:.3f}" for name, auc in sorted(selection["val_auroc"].items(), key=lambda x: -x[1])
        )
        print(
            f"image score {selection['chosen']}, chosen on validation from the training images "
            f"({selection['normals']} normal, {selection['anomalies']} synthetic anomalies; "
            f"{', '.join(selection['kinds_ranked_on'])}): {ranked}"
        )
    encoder = meta.get("encoder_choice")
    if encoder:
        print(
            f"shipped the {encoder['shipped']} encoder: validation AUROC trained {encoder['trained_val_auroc']:.3f}, "
            f"untrained twin {encoder['untrained_val_auroc']:.3f} (same anomalies)"
        )
    calibration = meta.get("calibration")
    if calibration:
        print(
            f"expected false-positive rate on normal images {calibration['expected_fpr']:.1%} "
            f"(95% bootstrap interval {calibration['fpr_low']:.1%}-{calibration['fpr_high']:.1%}, "
            f"{calibration['samples']} out-of-fold training scores)"
        )
    if args.evaluate:
        _print_evaluation(evaluate_category(run.detector, data, args.category).to_dict())
    return 0


def _local_data(args: argparse.Namespace, categories: list[str] | None) -> str:
    """A local dataset root: ``s3://`` data is fetched through the per-node cache first."""
    from cutpaste.storage import materialize

    return str(
        materialize(
            args.data,
            categories,
            endpoint_url=args.s3_endpoint,
            progress=_progress(args),
        )
    )


def _print_evaluation(report: dict[str, Any]) -> None:
    print(
        f"image AUROC {report['image_auroc']:.4f}  AUPR {report['aupr']:.4f}  F1-max {report['f1_max']:.4f}  "
        f"({report['num_good']} good, {report['num_defective']} defective)"
    )
    for defect, auroc in report["per_defect_auroc"].items():
        print(f"  {defect:<24} AUROC {auroc:.4f}")
    if report.get("pixel_auroc") is not None:
        print(
            f"pixel AUROC {report['pixel_auroc']:.4f}  AUPRO {report['aupro']:.4f}  "
            f"({report['defect_regions']} defect regions)"
        )
    if report.get("pixel_note"):
        print(f"note: {report['pixel_note']}")
    if report.get("test_fpr") is not None:
        good = report["test_fpr_normals"]
        line = f"false-positive rate at the threshold {report['test_fpr']:.1%} of {good} good images"
        if report.get("expected_fpr") is not None:
            line += (
                f" (expected {report['expected_fpr']:.1%}, "
                f"95% interval {report['expected_fpr_low']:.1%}-{report['expected_fpr_high']:.1%})"
            )
        print(line)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from cutpaste.atomic import atomic_write_text
    from cutpaste.ensemble import load_detector
    from cutpaste.train.loop import resolve_device
    from cutpaste.workflow import evaluate_category

    detector = load_detector(args.model, device=resolve_device(args.device))  # a detector or an ensemble
    category = args.category or detector.category
    data = _local_data(args, [category] if category else None)
    report = evaluate_category(detector, data, category, pixel=not args.no_pixel, map_mode=args.maps).to_dict()
    report["category"] = args.category or detector.category
    report["model"] = str(args.model)
    _print_evaluation(report)
    if args.json:
        atomic_write_text(json.dumps(report, indent=2), Path(args.json))
        print(f"wrote {args.json}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from cutpaste.data.images import load_image
    from cutpaste.ensemble import load_detector
    from cutpaste.train.loop import resolve_device

    # A detector or an ensemble; --sha256 pins it (e.g. to the digest its registry version is tagged with).
    detector = load_detector(args.model, device=resolve_device(args.device), expected_sha256=args.sha256)
    if args.heatmap and not hasattr(detector, "anomaly_maps"):
        raise ConfigError(f"--heatmap: {args.model} is an ensemble, which gives scores but no anomaly maps")
    threshold = detector.threshold if args.threshold is None else args.threshold
    size = detector.config.image_size
    rows: list[dict[str, Any]] = []
    images, ok = [], []
    for path in args.images:
        try:
            images.append(load_image(path, size))
            ok.append(path)
        except CutPasteError as exc:
            rows.append({"path": path, "error": str(exc)})
    if images and args.heatmap:
        from cutpaste.localization.localize import write_prediction_heatmaps

        batch = torch.stack(images)
        scores, maps = detector.anomaly_maps(batch, args.maps)
        written = write_prediction_heatmaps(detector, batch, maps, scores, ok, args.heatmap, threshold=threshold)
        scores = scores.tolist()
        print(f"wrote {len(written)} heatmaps to {args.heatmap}", file=sys.stderr)
    elif images:
        scores = detector.score(torch.stack(images)).tolist()
    if images:
        rows += [
            {"path": p, "score": s, "threshold": threshold, "anomalous": s >= threshold}
            for p, s in zip(ok, scores, strict=True)
        ]
    order = {p: i for i, p in enumerate(args.images)}
    rows.sort(key=lambda r: order[r["path"]])
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        width = max(len(r["path"]) for r in rows)
        print(f"{'image':<{width}}  {'score':>10}  verdict (threshold {threshold:.4f})")
        for r in rows:
            if "error" in r:
                print(f"{r['path']:<{width}}  {'-':>10}  error: {r['error']}")
            else:
                print(f"{r['path']:<{width}}  {r['score']:>10.4f}  {'ANOMALOUS' if r['anomalous'] else 'normal'}")
    failed = [r for r in rows if "error" in r]
    if failed:
        print(f"cutpaste: error: {len(failed)} of {len(rows)} images could not be read", file=sys.stderr)
        return 2
    return 0


def _cmd_localize(args: argparse.Namespace) -> int:
    from cutpaste.detector import Detector
    from cutpaste.localization.localize import localize_category
    from cutpaste.train.loop import resolve_device

    detector = Detector.load(args.model, device=resolve_device(args.device))
    category = args.category or detector.category
    data = _local_data(args, [category] if category else None)
    result = localize_category(
        detector,
        data,
        category,
        args.out,
        map_mode=args.maps,
        progress=_progress(args),
    )
    _print_evaluation(result.report)
    print(f"wrote {result.panels} overlays, {result.grid} and {result.json}")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    print(build_config(args).to_json())
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from cutpaste.data.synth import generate_dataset

    names = generate_dataset(
        args.out,
        categories=args.categories,
        size=args.size,
        seed=args.seed,
        progress=_progress(args),
    )
    print(f"wrote {len(names)} categories to {args.out}: {', '.join(names)}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from cutpaste.ensemble import bundle_digest, load_detector

    load_detector(args.model, expected_sha256=args.sha256)  # every check a load makes, then nothing else
    print(f"{args.model}: ok, SHA-256 {bundle_digest(args.model)}")
    return 0
