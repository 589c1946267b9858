"""Champions are chosen without test labels: shuffling the test metrics never changes the choice, while
the validation AUROC does; and the training-time validation reads no test folder."""

from __future__ import annotations

import random
import shutil
import statistics

import pytest

from pipelines.benchmark import choose_champions


def _records() -> list[dict]:
    rng = random.Random(0)
    records = []
    for category in ("bottle", "transistor"):
        for seed in range(5):
            records.append(
                {
                    "category": category,
                    "seed": seed,
                    "status": "finished",
                    "image_auroc": rng.random(),
                    "pixel_auroc": rng.random(),
                    "val_auroc": rng.random(),
                }
            )
    records.append({"category": "bottle", "seed": 9, "status": "failed", "image_auroc": None, "val_auroc": 1.0})
    return records


def test_shuffled_test_metrics_do_not_change_the_champion():
    records = _records()
    chosen = {c: r["seed"] for c, r in choose_champions(records).items()}
    for trial in range(20):
        shuffled = [dict(r) for r in records]
        values = [r["image_auroc"] for r in shuffled]
        random.Random(trial).shuffle(values)
        for r, v in zip(shuffled, values, strict=True):
            r["image_auroc"] = v
            r["pixel_auroc"] = 1.0 - (v or 0.0)
        assert {c: r["seed"] for c, r in choose_champions(shuffled).items()} == chosen
    best_val = {
        c: max((r for r in records if r["category"] == c and r["status"] == "finished"), key=lambda r: r["val_auroc"])[
            "seed"
        ]
        for c in chosen
    }
    assert chosen == best_val, "the highest validation AUROC wins; a failed run never does"


def test_runs_without_validation_fall_back_to_the_lowest_seed_not_to_test():
    records = [
        {"category": "a", "seed": 2, "status": "finished", "image_auroc": 0.99},
        {"category": "a", "seed": 1, "status": "finished", "image_auroc": 0.50},
    ]
    assert choose_champions(records)["a"]["seed"] == 1


@pytest.mark.slow
def test_training_validation_reads_no_test_folder(tmp_path):
    from cutpaste.config import preset
    from cutpaste.data import list_samples, load_images
    from cutpaste.data.synth import generate_dataset
    from cutpaste.detector import Detector
    from cutpaste.validation import training_validation
    from cutpaste.workflow import train_category

    root = tmp_path / "data"
    generate_dataset(root, categories=["synth_disc"], size=64, seed=0, train_count=12)
    shutil.move(root / "synth_disc" / "test", tmp_path / "hidden")
    config = preset("ci").override({"steps": 2, "checkpoint_every": 2, "log_every": 1})
    run = train_category(config, root, "synth_disc", tmp_path / "model", progress=False)
    validation = run.detector.meta["validation"]
    per_kind = [v for k, v in validation.items() if k.startswith("val_auroc_")]
    assert {"val_auroc_perlin", "val_auroc_distortion", "val_auroc_erasure"} <= set(validation)
    # As many anomalies of each kind against the same normals: the AUROC is exactly the per-kind mean.
    assert validation["val_auroc"] == pytest.approx(statistics.fmean(per_kind))
    # And it is the saved bundle's own number, from its training images alone (the test split is gone).
    images = load_images([s.path for s in list_samples(root, "synth_disc", "train")], config.image_size)
    again = training_validation(Detector.load(tmp_path / "model"), images, seed=config.seed)
    assert again == pytest.approx(validation, rel=1e-9)
