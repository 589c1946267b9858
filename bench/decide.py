"""Decides a preset's defaults under the written rule (bench/decision_rule.py), on several seeds.

    .venv/bin/python bench/decide.py --preset demo --seeds 0,1,2 --cache /tmp/cutpaste-decide \\
        --data ../shared/data --categories mvtec_ad/bottle,mvtec_ad/transistor,elpv/solar_poly,mvtec_3d/tire

Per category and seed, the run holds out fold ``seed % 5`` of ``train/good`` (cutpaste.evaluation.validation: over
five seeds every normal image is a validation normal once, always scored by an encoder that never saw
it), trains the preset on the other folds (and once more where a row changes the training), and scores
every row on the same validation set: the held-out normals and anomalies of the voting kinds made from
them (the other kinds are reported per kind). Rows that change only scoring share the training.
``bench/results/decisions.json`` keeps every row's numbers (a rerun replaces its own) and each
decision; ``docs/decisions.md`` is generated from it. Test AUROC is computed after the validation, stored
beside it, and never read by a decision.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from decide_rows import (
    PIXEL_ROWS,
    RECIPES,
    ROWS,
    TWIN_MEAN,
    WITHOUT_CHOSEN,
    decisions,
    row_config,
)
from decision_rule import MIN_SEEDS
from decisions_doc import DECIDED_PRESETS, render
from quality import _CACHE, _trained, load_images_tensor, training_key

from cutpaste.atomic import atomic_write_text
from cutpaste.config import TrainConfig
from cutpaste.data import list_samples, load_images
from cutpaste.data.layout import MissingMaskWarning
from cutpaste.detector import Detector
from cutpaste.ensemble import build_ensemble
from cutpaste.evaluation.evaluate import evaluate_detector
from cutpaste.evaluation.metrics import image_metrics
from cutpaste.evaluation.validation import (
    FOLDS,
    score_validation,
    score_validation_maps,
    split_train,
    synthetic_validation,
)
from cutpaste.fit import fit_detector
from cutpaste.model.network import build_model
from cutpaste.model.precision import use_amp
from cutpaste.presets import preset
from cutpaste.scoring import selection as scorer_selection
from cutpaste.scoring.baselines import pixel_statistics_scores, untrained_detector
from cutpaste.train.loop import resolve_device


@contextlib.contextmanager
def _candidates_without(name: str) -> Iterator[None]:
    """auto's list without ``name`` for the duration (a measurement only: the product has one list)."""
    kept = scorer_selection.CANDIDATES
    if name.startswith("without-"):
        scorer_selection.CANDIDATES = tuple(c for c in kept if c.name != name.removeprefix("without-"))
    try:
        yield
    finally:
        scorer_selection.CANDIDATES = kept


def score_row(name: str, config: TrainConfig, data: Path, category: str, fold: int) -> dict[str, Any]:
    """One row on one (category, seed): validation on the held-out fold, then test (reported only)."""
    with _candidates_without(name):
        return _score_row(name, config, data, category, fold)


def _score_row(name: str, config: TrainConfig, data: Path, category: str, fold: int) -> dict[str, Any]:
    train_samples, held = split_train(list_samples(data, category, "train"), fold=fold)
    validation = synthetic_validation(held)
    train_images = load_images([s.path for s in train_samples], config.image_size)
    test = list_samples(data, category, "test")
    out: dict[str, Any] = {"validation_digest": validation.digest, "validation_normals": len(held)}
    started = time.perf_counter()
    if ROWS[name][1]:
        (state, out["train_s"], _), _ = _trained(training_key(config, f"{category}/fold{fold}"), config, train_images)
        out["train_precision"] = training_precision(config)
        model = build_model(config)
        model.load_state_dict(state)
        detector = fit_detector(model.eval(), train_images, config, category=category)
    else:
        detector = untrained_detector(config, train_images, category=category)
    selection = detector.meta.get("image_score_selection")
    if selection:
        out["auto_choice"] = selection["chosen"]
    if name == TWIN_MEAN:
        twin = untrained_detector(config, train_images, category=category)
        detector = build_ensemble([detector, twin], train_images, category=category)
    if isinstance(detector, Detector) and detector.is_patch_model:  # one dense pass gives the scores and the maps
        scores, maps = detector.anomaly_maps(validation.images)
        out.update(score_validation(scores, validation))
        out.update(score_validation_maps(maps, validation))
    else:
        out.update(score_validation(detector.score(validation.images), validation))
    evaluation = evaluate_detector(detector, test, pixel=name in PIXEL_ROWS)
    out["image_auroc"] = evaluation.metrics.image_auroc
    if evaluation.pixel is not None:
        out["pixel_auroc"], out["aupro"] = evaluation.pixel.pixel_auroc, evaluation.pixel.aupro
    out["score_s"] = time.perf_counter() - started
    return out


def training_precision(config: TrainConfig) -> str:
    """How ``config`` trains on this machine ("cpu/fp32", "cpu/bf16", "cuda/bf16"; bf16 only where
    cutpaste.model.precision finds it native): bf16 moves AUROC by as much as some decisions' gains, so
    rows trained otherwise are not paired."""
    device = resolve_device("auto")
    return f"{device.type}/{'bf16' if use_amp(device, config.amp) else 'fp32'}"


def unpairable(recorded: dict[str, dict[str, Any]], rows: list[str], here: str) -> dict[str, str]:
    """The recorded trained rows that new training rows could not be paired with (row: how it trained,
    "unrecorded" for runs from before the precision was kept); empty when no row asked for trains."""
    if not any(ROWS.get(name, (None, False))[1] for name in rows if name not in recorded):
        return {}
    return {
        name: r.get("train_precision", "unrecorded")
        for name, r in recorded.items()
        if "train_s" in r and r.get("train_precision") != here
    }


def pixel_stats_row(data: Path, category: str, fold: int, size: int) -> dict[str, Any]:
    """The floor: per-image colour statistics, on the same validation (per kind: do they saturate it?)."""
    train_samples, held = split_train(list_samples(data, category, "train"), fold=fold)
    validation = synthetic_validation(held)
    train_images = load_images([s.path for s in train_samples], size)
    test = list_samples(data, category, "test")
    out: dict[str, Any] = {"validation_digest": validation.digest, "validation_normals": len(held)}
    out.update(
        score_validation(pixel_statistics_scores(train_images, load_images_tensor(validation.images, size)), validation)
    )
    test_scores = pixel_statistics_scores(train_images, load_images([s.path for s in test], size))
    labels, defects = [s.label for s in test], [s.defect_type for s in test]
    out["image_auroc"] = image_metrics(labels, test_scores.tolist(), defects).image_auroc
    return out


def merge_runs(path: Path, fresh: list[dict[str, Any]]) -> list[dict[str, Any]]:
    old = json.loads(path.read_text())["runs"] if path.is_file() else []
    key = ("preset", "category", "seed", "row")
    mine = {tuple(r[k] for k in key) for r in fresh}
    return [r for r in old if tuple(r[k] for k in key) not in mine] + fresh


def write(path: Path, runs: list[dict[str, Any]], categories: list[str]) -> None:
    """decisions.json (every run and every decision) and docs/decisions.md, each written atomically."""
    root = Path(__file__).resolve().parents[1]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=root
    ).stdout.strip()
    made = []
    for preset_name in sorted({r["preset"] for r in runs} & set(DECIDED_PRESETS)):
        for d in decisions(runs, preset_name, categories):
            made.append({**d, "commit": commit})
    made += _frozen(path, made)
    atomic_write_text(json.dumps({"min_seeds": MIN_SEEDS, "runs": runs, "decisions": made}, indent=1), path)

    docs = root / "docs" / "decisions.md"
    docs.parent.mkdir(exist_ok=True)
    atomic_write_text(render(json.loads(path.read_text())), docs)


def _frozen(path: Path, made: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Recorded decisions this code no longer makes, kept as they were (with their commit): those of a
    retired preset (:data:`decisions_doc.RETIRED`) and of options deleted after losing."""
    old = json.loads(path.read_text())["decisions"] if path.is_file() else []
    key = ("preset", "decision", "scope")
    mine = {tuple(d[k] for k in key) for d in made}
    return [d for d in old if tuple(d[k] for k in key) not in mine]


def run_category(
    preset_name: str, root: Path, category: str, seed: int, rows: list[str], recorded: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """The rows (and the pixel-statistics floor) of one (category, seed) not in ``recorded``; prints
    validation only."""
    fresh: list[dict[str, Any]] = []
    for name in ["pixel-stats", *rows]:
        if name in recorded:
            continue
        if name == WITHOUT_CHOSEN:
            base = next((r for r in fresh if r["row"] == "preset"), recorded.get("preset"))
            if base is None:
                raise SystemExit(f"--rows: {WITHOUT_CHOSEN} needs the preset row (ask for it before)")
            fresh += [_without(preset_name, root, base, c.name) for c in scorer_selection.CANDIDATES]
        elif name == "pixel-stats":
            fresh.append(
                _timed(
                    preset_name,
                    category,
                    seed,
                    name,
                    pixel_stats_row,
                    root,
                    category,
                    seed % FOLDS,
                    preset(preset_name).image_size,
                )
            )
        else:
            config = row_config(name, preset_name, seed)
            fresh.append(
                _timed(preset_name, category, seed, name, score_row, name, config, root, category, seed % FOLDS)
            )
    return fresh


def _timed(preset_name: str, category: str, seed: int, name: str, fn: Any, *args: Any) -> dict[str, Any]:
    started = time.perf_counter()
    result = fn(*args)
    result.update(preset=preset_name, category=category, seed=seed, row=name, threads=torch.get_num_threads())
    result["wall_s"] = time.perf_counter() - started
    print(f"{preset_name} {category:>11} seed {seed} {name:<14} val {result['val_auroc']:.3f}", flush=True)
    return result


def _without(preset_name: str, root: Path, base: dict[str, Any], candidate: str) -> dict[str, Any]:
    """auto's list without ``candidate``: scored where the preset row chose it, else a copy of that row
    (the same candidate still ranks first, so every image score is the same)."""
    name = f"without-{candidate}"
    if candidate != base.get("auto_choice"):
        return {**base, "row": name, "same_as": "preset", "wall_s": 0.0}
    category, seed = base["category"], base["seed"]
    config = row_config("preset", preset_name, seed)
    return _timed(preset_name, category, seed, name, score_row, name, config, root, category, seed % FOLDS)


def recorded_rows(runs: list[dict[str, Any]], preset_name: str, category: str, seed: int) -> dict[str, dict[str, Any]]:
    """The rows one (category, seed) already has; "without-chosen" counts as recorded once every
    without-<candidate> row is."""
    have = {r["row"]: r for r in runs if (r["preset"], r["category"], r["seed"]) == (preset_name, category, seed)}
    if all(f"without-{c.name}" in have for c in scorer_selection.CANDIDATES):
        have[WITHOUT_CHOSEN] = {}
    return have


def main() -> None:
    warnings.simplefilter("ignore", MissingMaskWarning)  # ELPV has image labels only: no pixel metrics
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", required=True, choices=DECIDED_PRESETS)
    parser.add_argument("--data", required=True, help="folder holding the categories' roots")
    parser.add_argument("--categories", required=True, help="comma-separated ROOT/CATEGORY under --data")
    parser.add_argument("--seeds", default="0,1,2")
    base_rows = [r for r in ROWS if not r.startswith("without-") and r not in RECIPES]
    parser.add_argument(
        "--rows",
        default=",".join([*base_rows, WITHOUT_CHOSEN]),
        help=f"comma-separated: {', '.join([*base_rows, WITHOUT_CHOSEN])} (after preset); training recipes, "
        f"each one more training: {', '.join(RECIPES)}",
    )
    parser.add_argument("--cache", help="folder for trained models (a rerun reuses them)")
    parser.add_argument("--out", default="bench/results/decisions.json")
    parser.add_argument("--redo", action="store_true", help="score rows already recorded again")
    args = parser.parse_args()
    rows = [r for r in args.rows.split(",") if r]
    if unknown := sorted(set(rows) - set(ROWS) - {WITHOUT_CHOSEN}):
        parser.error(f"--rows: unknown {', '.join(unknown)}")
    specs = [c.strip() for c in args.categories.split(",") if c.strip()]
    for spec in specs:
        if not (Path(args.data) / spec / "train").is_dir():
            parser.error(f"--categories {spec}: no {Path(args.data) / spec / 'train'} (check --data)")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: expected comma-separated integers")
    if args.cache:
        _CACHE.append((Path(args.cache), str(Path(args.data).resolve())))
    out = Path(args.out)
    for seed in seeds:
        for spec in specs:
            category = Path(spec).name
            recorded = {} if args.redo else recorded_rows(merge_runs(out, []), args.preset, category, seed)
            if all(row in recorded for row in rows):
                print(f"{args.preset} {category:>11} seed {seed}: every row recorded (--redo scores again)")
                continue
            here = training_precision(preset(args.preset))
            if other := unpairable(recorded, rows, here):
                trained = ", ".join(f"{name} ({how})" for name, how in sorted(other.items()))
                raise SystemExit(
                    f"--preset {args.preset} {category} seed {seed}: this machine trains in {here}; the recorded "
                    f"rows {trained} did not, and rows trained in another precision are not paired "
                    "(--redo trains and scores every row here, or run where they were trained)"
                )
            fresh = run_category(args.preset, Path(args.data) / Path(spec).parent, category, seed, rows, recorded)
            runs = merge_runs(out, fresh)
            write(out, runs, sorted({r["category"] for r in runs}))
    print(f"wrote {out} and docs/decisions.md")


if __name__ == "__main__":
    main()
