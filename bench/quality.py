"""The quality matrix: per category, every scoring choice and training option side by side, in one run.

    .venv/bin/python bench/quality.py --data ../shared/data/mvtec_ad --categories bottle,transistor
    .venv/bin/python bench/quality.py --synth synth_weave,synth_grain --rows short,short-untrained

Rows (``--rows``, default all): ``pixel-stats`` (global colour statistics), ``untrained`` (the paper's
image model with random weights, same density), ``paper-image`` (the paper's image model: 3-way
CutPaste, SGD, pooled embedding, one Gaussian), ``patch`` (the paper's patch model, image score the
maximum of its map), one row per option on top of ``paper-image`` (``local``, ``auto``
(the ``demo`` preset), ``auto-one-stage``, ``auto-no-pre-jitter``), and ``short`` / ``short-untrained``
(the ``short`` preset, trained and with random weights) with the ``short-*`` scoring variants of the
same model. Defaults are decided by ``bench/decide.py`` on several seeds, not here (docs/decisions.md).
Option rows use ``--preset`` (default ``demo``) for their budget and size, with the paper's choices
wherever the row does not name another.

Every trained row trains on 80% of ``train/good``; the other 20%, and one synthetic anomaly of
each kind made from each of them (:mod:`cutpaste.evaluation.validation`), give the validation AUROC, the only
column a choice may be read from. Test image AUROC, pixel AUROC and AUPRO (where masks exist) are
reported next to it, never used. Results merge into ``bench/results/quality.json`` (one entry per
category and row; a rerun replaces its own) and the Markdown table ``bench/results/quality.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from quality_rows import PAPER_CHOICES, ROWS, Row  # bench/ scripts import their siblings by name

from cutpaste.atomic import atomic_write_text
from cutpaste.cli import build_config
from cutpaste.config import TrainConfig, config_part
from cutpaste.data import list_samples, load_images
from cutpaste.data.synth import SYNTH_CATEGORIES, generate_dataset
from cutpaste.errors import CutPasteError
from cutpaste.evaluation.evaluate import evaluate_detector
from cutpaste.evaluation.metrics import image_metrics
from cutpaste.evaluation.paper import PAPER_IMAGE_AUROC, PAPER_PIXEL_AUROC
from cutpaste.evaluation.validation import ANOMALY_KINDS, score_validation, split_train, synthetic_validation
from cutpaste.fit import fit_detector
from cutpaste.model.network import build_model
from cutpaste.presets import parse_overrides, preset
from cutpaste.scoring.baselines import pixel_statistics_scores, untrained_detector
from cutpaste.train.loop import train_model


def row_config(row: Row, base: TrainConfig, explicit: dict[str, Any] | None = None) -> TrainConfig:
    """The row's config: the short preset at its own budget, or ``base`` with the paper's choices and the
    row's; then ``explicit``, the fields given on the command line (``--steps 2`` for a smoke run,
    ``--set local_density=per_location``), which win over the row's own."""
    explicit = explicit or {}
    if row.short:
        return preset("short").override({"seed": base.seed, **row.changes, **explicit})
    changes = {**PAPER_CHOICES, **row.changes}
    return base.override({**changes, **explicit}, source=f"row {row.description!r}")


def training_key(config: TrainConfig, category: str) -> str:
    """Rows whose configs differ only in how the density is fitted and scored share one trained model."""
    return json.dumps([category, config_part(config, "training")], sort_keys=True, default=str)


# Trained models by training_key: (model state, seconds it took, final accuracy).
_TRAINED: dict[str, tuple[dict[str, torch.Tensor], float, float | None]] = {}
# With --cache: (folder where trained models persist, what the data is), so a rerun with new scoring
# rows does not retrain. The data's identity is part of the name: another --data root trains anew.
_CACHE: list[tuple[Path, str]] = []


def _cache_file(key: str) -> Path | None:
    if not _CACHE:
        return None
    folder, data = _CACHE[0]
    return folder / f"{hashlib.sha256((data + key).encode()).hexdigest()[:20]}.pt"


def _trained(
    key: str, config: TrainConfig, train_images: torch.Tensor
) -> tuple[tuple[dict, float, float | None], bool]:
    """The model a training key names (state, seconds it took, final accuracy), and whether it was reused:
    from this run or from --cache, or trained now (and cached)."""
    if key in _TRAINED:
        return _TRAINED[key], True
    path = _cache_file(key)
    if path is not None and path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("key") == key and saved.get("data") == _CACHE[0][1]:
            _TRAINED[key] = (saved["state"], float(saved["train_s"]), saved.get("final_accuracy"))
            return _TRAINED[key], True
    started = time.perf_counter()
    result = train_model(config, train_images, device="auto", progress=False)
    accuracy = result.history[-1]["accuracy"] if result.history else None
    state = {k: v.detach().clone() for k, v in result.model.state_dict().items()}
    _TRAINED[key] = (state, time.perf_counter() - started, accuracy)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(
            {"key": key, "data": _CACHE[0][1], "state": state, "train_s": _TRAINED[key][1], "final_accuracy": accuracy},
            tmp,
        )
        tmp.replace(path)
    return _TRAINED[key], False


def run_row(name: str, row: Row, config: TrainConfig, data: Path, category: str) -> dict[str, Any]:
    """Trains (unless the row is a floor, or a row with the same training already ran: its model is
    reused and its training time reported), then scores validation and test; returns the row's numbers."""
    samples = list_samples(data, category, "train")
    train_samples, held_out = split_train(samples)
    validation = synthetic_validation(held_out)
    test = list_samples(data, category, "test")
    train_images = load_images([s.path for s in train_samples], config.image_size)
    out: dict[str, Any] = {"category": category, "row": name, "description": row.description}
    if name == "pixel-stats":
        started = time.perf_counter()
        test_images = load_images([s.path for s in test], config.image_size)
        labels, defects = [s.label for s in test], [s.defect_type for s in test]
        test_scores = pixel_statistics_scores(train_images, test_images)
        val_images = load_images_tensor(validation.images, config.image_size)
        val_scores = pixel_statistics_scores(train_images, val_images)
        out.update(score_validation(val_scores, validation))
        out.update(
            image_auroc=image_metrics(labels, test_scores.tolist(), defects).image_auroc,
            train_s=0.0,
            score_s=time.perf_counter() - started,
        )
        return out
    started = time.perf_counter()
    if row.train:
        (state, out["train_s"], out["final_accuracy"]), reused = _trained(
            training_key(config, category), config, train_images
        )
        if reused:
            out["shared_training"] = True
        model = build_model(config)
        model.load_state_dict(state)
        detector = fit_detector(model.eval(), train_images, config, category=category)
    else:
        detector = untrained_detector(config, train_images, category=category)
        out["train_s"] = 0.0
    selection = detector.meta.get("image_score_selection")
    if selection:  # image_score=auto chose on the training images; what it chose and why
        out["auto_choice"] = selection["chosen"]
        out["auto_selection_auroc"] = selection["val_auroc"]
    started = time.perf_counter()
    out.update(score_validation(detector.score(validation.images), validation))
    evaluation = evaluate_detector(detector, test)
    out["score_s"] = time.perf_counter() - started
    out["image_auroc"] = evaluation.metrics.image_auroc
    out["per_defect_auroc"] = evaluation.metrics.per_defect_auroc
    if evaluation.pixel is not None:
        out["pixel_auroc"], out["aupro"] = evaluation.pixel.pixel_auroc, evaluation.pixel.aupro
    return out


def load_images_tensor(images: torch.Tensor, size: int) -> torch.Tensor:
    """Validation images (uint8, any size) at ``size``, as uint8 like decoded ones."""
    if images.shape[-1] == size:
        return images
    x = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8)


def merge(path: Path, fresh: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Earlier entries of other (category, row) pairs are kept; this run's replace theirs."""
    old = json.loads(path.read_text())["rows"] if path.is_file() else []
    mine = {(r["category"], r["row"]) for r in fresh}
    return [r for r in old if (r["category"], r["row"]) not in mine] + fresh


def _current_validation(row: dict[str, Any]) -> bool:
    """Whether a row's validation AUROC was measured with every anomaly kind the validation set has now
    (pixel statistics included: it scores the same validation images)."""
    return all(f"val_auroc_{kind}" in row for kind in ANOMALY_KINDS) or "val_auroc" not in row


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """One table per category, rows in matrix order, then the mean over categories per row. Rows whose
    option has since been deleted (git history has it) keep their results and follow the others."""
    order = list(ROWS) + sorted({r["row"] for r in rows} - set(ROWS))
    lines = []
    categories = sorted({r["category"] for r in rows})
    header = (
        "| row | val AUROC | image AUROC | pixel AUROC | AUPRO | train s | score s | config |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    for category in categories:
        paper = PAPER_IMAGE_AUROC.get(category)
        pixel = PAPER_PIXEL_AUROC.get(category)
        note = f" (paper: image {paper}, pixel {pixel})" if paper else ""
        lines += [f"**{category}**{note}", "", header]
        mine = sorted((r for r in rows if r["category"] == category), key=lambda r: order.index(r["row"]))
        older = False
        for r in mine:
            cfg = r.get("config_summary", "")
            # A row scored before the validation set had its present anomaly kinds is marked, not mixed in silently.
            mark = "" if _current_validation(r) else "*"
            older = older or bool(mark)
            lines.append(
                f"| {r['row']} | {_fmt(r.get('val_auroc'))}{mark} | {_fmt(r.get('image_auroc'))} | "
                f"{_fmt(r.get('pixel_auroc'))} | {_fmt(r.get('aupro'))} | {_fmt(r.get('train_s'), 0)} | "
                f"{_fmt(r.get('score_s'), 0)} | {cfg} |"
            )
        if older:
            kinds = ", ".join(ANOMALY_KINDS)
            lines += ["", f"\\* validation without all of today's anomaly kinds ({kinds}): rerun the row to compare"]
        lines.append("")
    if len(categories) > 1:
        lines += ["**mean over categories**", "", "| row | val AUROC | image AUROC | categories |", "|---|---|---|---|"]
        for name in order:
            mine = [r for r in rows if r["row"] == name]
            if mine:
                val = statistics.mean(r["val_auroc"] for r in mine)
                test = statistics.mean(r["image_auroc"] for r in mine)
                lines.append(f"| {name} | {val:.3f} | {test:.3f} | {len(mine)} |")
        lines.append("")
    return "\n".join(lines)


def config_summary(config: TrainConfig) -> str:
    kind = f"patch {config.patch_size}/{config.patch_stride}" if config.patch_size else config.image_score
    if config.image_score in ("local", "auto") and not config.patch_size:
        layers = "+".join(str(i) for i in config.feature_map_stages)
        kind += f" ({config.feature_density}, layer{layers} grid {config.local_grid})"
    return (
        f"{config.variant}, sgd {config.learning_rate:g}, {config.steps}x"
        f"{config.batch_size * config.num_classes} @ {config.image_size}px, pre-jitter {config.augment.pre_jitter:g}, "
        f"pooled, {kind}"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="MVTec-layout root")
    source.add_argument("--synth", help="comma-separated synthetic categories, generated into a temporary folder")
    parser.add_argument("--categories", help="comma-separated categories under --data")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows: {', '.join(ROWS)}")
    parser.add_argument("--preset", default="demo", help="budget and size of the option rows (default demo)")
    parser.add_argument("--config")
    for flag in ("seed", "steps", "size", "batch_size"):
        parser.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=int)
    parser.add_argument("--set", action="append", help="config field for the option rows, e.g. learning_rate=0.01")
    parser.add_argument("--synth-size", type=int, default=128)
    parser.add_argument("--out", default="bench/results/quality.json")
    parser.add_argument(
        "--cache", help="folder for trained models: a rerun that adds scoring rows reuses them instead of retraining"
    )
    return parser


def _settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[list[str], TrainConfig, dict]:
    """The rows asked for, the base config and the fields given explicitly; ``--cache`` is set up."""
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        parser.error(f"--rows: unknown {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    try:
        base = build_config(args)
    except CutPasteError as exc:
        parser.error(str(exc))
    fields = {"steps": "steps", "size": "image_size", "batch_size": "batch_size"}
    explicit = {field: getattr(args, flag) for flag, field in fields.items() if getattr(args, flag) is not None}
    explicit.update(parse_overrides(args.set or []))
    if args.cache:
        if Path(args.cache).exists() and not Path(args.cache).is_dir():
            parser.error(f"--cache: {args.cache} is a file, not a folder for trained models")
        data_id = f"synth size {args.synth_size} seed 0" if args.synth else str(Path(args.data).resolve())
        _CACHE.append((Path(args.cache), data_id))
    return rows, base, explicit


def _dataset(parser: argparse.ArgumentParser, args: argparse.Namespace, scratch: str) -> tuple[Path, list[str]]:
    """The data root and its categories: ``--data``, or ``--synth`` categories generated into ``scratch``."""
    if args.synth:
        categories = [c.strip() for c in args.synth.split(",") if c.strip()]
        bad = sorted(set(categories) - set(SYNTH_CATEGORIES))
        if bad:
            parser.error(f"--synth: unknown {', '.join(bad)}; choose from {', '.join(SYNTH_CATEGORIES)}")
        data = Path(scratch) / "data"
        generate_dataset(data, categories=categories, size=args.synth_size, seed=0)
        return data, categories
    if not args.categories:
        parser.error("--categories is required with --data")
    return Path(args.data), [c.strip() for c in args.categories.split(",") if c.strip()]


def _matrix_row(name: str, config: TrainConfig, data: Path, category: str) -> dict[str, Any]:
    """One row of one category, with its config and wall time, printed as it ends."""
    started = time.perf_counter()
    result = run_row(name, ROWS[name], config, data, category)
    result["config_summary"] = config_summary(config) if name != "pixel-stats" else ""
    if result.get("auto_choice"):
        result["config_summary"] += f"; auto chose {result['auto_choice']}"
    result["config"] = config.to_dict()
    result["threads"] = torch.get_num_threads()
    result["wall_s"] = time.perf_counter() - started
    print(
        f"{category:>12} {name:<16} val {result['val_auroc']:.3f}  image {result['image_auroc']:.3f}  "
        f"pixel {_fmt(result.get('pixel_auroc'))}  aupro {_fmt(result.get('aupro'))}  "
        f"train {result['train_s']:.0f}s  score {result['score_s']:.0f}s",
        flush=True,
    )
    return result


def main() -> None:
    parser = _parser()
    args = parser.parse_args()
    rows, base, explicit = _settings(parser, args)
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="cutpaste-quality-") as scratch:
        data, categories = _dataset(parser, args, scratch)
        fresh = []
        for category in categories:
            for name in rows:
                config = row_config(ROWS[name], base, explicit)
                fresh.append(_matrix_row(name, config, data, category))
                merged = merge(out, fresh)  # written after every row: an interrupted matrix keeps what it has
                atomic_write_text(json.dumps({"rows": merged}, indent=2), out)
                atomic_write_text(to_markdown(merged), out.with_suffix(".md"))
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
