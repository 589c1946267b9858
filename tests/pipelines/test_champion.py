"""Champions are chosen without test labels: shuffling the test metrics never changes the choice, while
the validation AUROC does; and the training-time validation reads no test folder."""

from __future__ import annotations

import random
import shutil
import statistics

import pytest

from cutpaste.anomalies.kinds import ANOMALY_KINDS, VOTING_KINDS
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


def test_champions_compare_validation_only_on_one_digest():
    """A run scored on other anomalies (another digest) never wins by them: the digest most runs share
    decides which runs compete, and within it the highest validation AUROC wins."""
    records = [
        {"category": "a", "seed": s, "status": "finished", "val_auroc": v, "validation_digest": d}
        for s, v, d in ((0, 0.80, "x"), (1, 0.85, "x"), (2, 0.99, "y"))
    ]
    assert choose_champions(records)["a"]["seed"] == 1
    records[0]["validation_digest"] = "y"  # now y is the majority: seed 2 competes and wins
    assert choose_champions(records)["a"]["seed"] == 2


@pytest.mark.slow
def test_training_validation_reads_no_test_folder_and_is_one_set_across_seeds(tmp_path):
    from cutpaste.data import list_samples, load_images
    from cutpaste.data.synth import generate_dataset
    from cutpaste.detector import Detector
    from cutpaste.evaluation.validation import training_validation
    from cutpaste.presets import preset
    from cutpaste.workflow import train_category

    root = tmp_path / "data"
    generate_dataset(root, categories=["synth_disc"], size=64, seed=0, train_count=12)
    shutil.move(root / "synth_disc" / "test", tmp_path / "hidden")
    config = preset("ci").override({"steps": 2, "checkpoint_every": 2, "log_every": 1})
    runs = [
        train_category(config.override({"seed": seed}), root, "synth_disc", tmp_path / f"model{seed}", progress=False)
        for seed in (0, 1)
    ]
    validation = [run.detector.meta["validation"] for run in runs]
    assert {f"val_auroc_{kind}" for kind in ANOMALY_KINDS} <= set(validation[0])
    assert validation[0]["digest"] == validation[1]["digest"], "every seed is scored on the same anomalies"
    assert validation[0]["val_auroc"] != validation[1]["val_auroc"], "by detectors that differ"
    # As many anomalies of each voting kind against the same normals: the AUROC is exactly their mean.
    voting = [validation[0][f"val_auroc_{kind}"] for kind in VOTING_KINDS]
    assert validation[0]["val_auroc"] == pytest.approx(statistics.fmean(voting))
    # And it is the saved bundle's own number, from its training images alone (the test split is gone).
    images = load_images([s.path for s in list_samples(root, "synth_disc", "train")], config.image_size)
    again = training_validation(Detector.load(tmp_path / "model0"), images)
    assert again.pop("digest") == validation[0]["digest"]
    assert again == pytest.approx({k: v for k, v in validation[0].items() if k != "digest"}, rel=1e-9)
