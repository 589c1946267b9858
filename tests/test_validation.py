"""The validation set: deterministic folds of train/good, anomaly kinds that copy no training view (and the
ones that do, reported apart), one digest per set, labelled folders, and training scored on it without
ever touching the test split."""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from cutpaste.anomalies.blobs import BLOB_AREA, blob_masks
from cutpaste.anomalies.kinds import ANOMALY_KINDS, REPORTED_KINDS, VOTING_KINDS, perlin_anomalies
from cutpaste.anomalies.noise import perlin_noise
from cutpaste.anomalies.strokes import stroke_anomalies
from cutpaste.data.layout import list_samples
from cutpaste.data.synth import generate_dataset
from cutpaste.errors import ConfigError, DataError
from cutpaste.evaluation.validation import (
    DRAWS,
    ValidationSet,
    folder_validation,
    prepare_validation,
    score_validation,
    score_validation_maps,
    split_train,
    synthetic_validation,
    validate_config,
)
from cutpaste.presets import preset
from cutpaste.scoring.baselines import pixel_statistics_scores


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("val") / "data"
    generate_dataset(
        root, categories=["synth_disc"], size=64, seed=3, train_count=12, test_good=3, test_defect_per_type=1
    )
    return root


def test_split_is_deterministic_disjoint_and_complete(synth_root):
    samples = list_samples(synth_root, "synth_disc", "train")
    train, held = split_train(samples, folds=4)
    again_train, again_held = split_train(list(reversed(samples)), folds=4)
    assert [s.path for s in held] == [s.path for s in again_held]
    assert [s.path for s in train] == [s.path for s in again_train]
    assert len(held) == 3 and len(train) == 9
    assert not {s.path for s in train} & {s.path for s in held}
    # The folds partition train/good: over folds every image is held out exactly once.
    held_out = [s.path for fold in range(4) for s in split_train(samples, fold=fold, folds=4)[1]]
    assert sorted(held_out) == sorted(s.path for s in samples)
    assert split_train(samples, fold=5, folds=4)[1] == split_train(samples, fold=1, folds=4)[1], "the fold wraps"
    with pytest.raises(DataError, match="too few"):
        split_train(samples[:7], folds=4)


def test_perlin_anomalies_are_seeded_local_and_not_rectangles():
    images = torch.full((6, 3, 64, 64), 120, dtype=torch.uint8)
    out, masks = perlin_anomalies(images, torch.Generator().manual_seed(1), area_ratio=(0.05, 0.1))
    again, _ = perlin_anomalies(images, torch.Generator().manual_seed(1), area_ratio=(0.05, 0.1))
    assert torch.equal(out, again)
    area = masks.float().mean((1, 2))
    assert ((area > 0.04) & (area < 0.11)).all()
    # Outside the mask nothing changes; inside, the foreign texture shows.
    assert torch.equal(out.permute(1, 0, 2, 3)[:, ~masks], images.permute(1, 0, 2, 3)[:, ~masks])
    assert (out.permute(1, 0, 2, 3)[:, masks].float() - 120).abs().mean() > 5
    # A CutPaste patch fills its bounding box; a thresholded Perlin blob does not.
    for mask in masks:
        rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert mask.sum() < 0.95 * box
    noise = perlin_noise(2, 48, 4, torch.Generator().manual_seed(0))
    assert noise.shape == (2, 48, 48) and noise.abs().max() <= 1.5


def _write(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((40, 40, 3), value, np.uint8)).save(path)


def test_validation_folder_needs_normal_and_anomalous_images(tmp_path):
    folder = tmp_path / "val"
    _write(folder / "good" / "a.png", 100)
    _write(folder / "good" / "b.png", 110)
    with pytest.raises(DataError, match=r"has no anomalies"):
        folder_validation(folder)
    (folder / "empty_defect").mkdir()
    with pytest.raises(DataError, match=r"has no anomalies"):
        folder_validation(folder)
    _write(folder / "scratch" / "c.png", 10)
    validation = folder_validation(folder, size=32)
    assert validation.labels == [0, 0, 1] and validation.kinds == ["good", "good", "scratch"]
    assert validation.images.shape == (3, 3, 32, 32)
    only_bad = tmp_path / "bad_only"
    _write(only_bad / "crack" / "x.png", 0)
    with pytest.raises(DataError, match="no normal images"):
        folder_validation(only_bad)
    with pytest.raises(DataError, match="not found"):
        folder_validation(tmp_path / "nowhere")


def test_with_a_folder_every_training_image_trains(synth_root, tmp_path):
    folder = tmp_path / "val"
    _write(folder / "good" / "a.png", 100)
    _write(folder / "hole" / "b.png", 0)
    samples, validation = prepare_validation(synth_root, "synth_disc", folder=folder, size=32)
    assert len(samples) == 12 and validation.source == str(folder)


@pytest.mark.slow
def test_training_is_scored_per_step_on_validation_only(synth_root, tmp_path):
    """The test split is moved away while training runs: any read of it would fail."""
    test_dir = synth_root / "synth_disc" / "test"
    hidden = tmp_path / "hidden-test"
    shutil.move(test_dir, hidden)
    try:
        config = preset("ci").override({"steps": 4, "checkpoint_every": 2, "log_every": 2})
        seen = []
        run = validate_config(config, synth_root, "synth_disc", ensemble_size=2, device="cpu", on_eval=seen.append)
    finally:
        shutil.move(hidden, test_dir)
    assert [r["step"] for r in seen] == [2.0, 4.0, 6.0, 8.0, 8.0]  # two members, then the ensemble
    for r in seen:  # as many anomalies of each voting kind: the AUROC is exactly the mean of theirs
        voting = [r[f"val_auroc_{kind}"] for kind in VOTING_KINDS]
        assert len([k for k in r if k.startswith("val_auroc_")]) == len(ANOMALY_KINDS), r
        assert r["val_auroc"] == pytest.approx(statistics.fmean(voting)), r
    assert run.metrics["val_auroc"] == seen[-1]["val_auroc"]
    # Each member's result is its own last step's, not another member's or the ensemble's.
    assert [m["val_auroc"] for m in run.member_metrics] == [seen[1]["val_auroc"], seen[3]["val_auroc"]]
    # Fold 0 of 5 holds 3 of the 12 images out; each gives DRAWS anomalies of every kind.
    assert run.train_images == 9 and run.validation_images == 3 + 3 * len(ANOMALY_KINDS) * DRAWS
    assert len(run.member_metrics) == 2 and len(run.detector.members) == 2


def test_validation_has_every_kind_of_every_held_out_image_and_one_digest(synth_root):
    samples = list_samples(synth_root, "synth_disc", "train")
    _, held = split_train(samples, folds=4)
    validation = synthetic_validation(held, size=32, draws=2)
    n, kinds = len(held), list(ANOMALY_KINDS)
    assert validation.labels == [0] * n + [1] * 2 * len(kinds) * n
    assert validation.kinds == ["good"] * n + [k for _ in range(2) for k in kinds for _ in range(n)]
    normal = validation.images[:n].float()
    for block, kind in enumerate(kinds * 2, start=1):
        made = validation.images[block * n : (block + 1) * n].float()
        assert ((made - normal).abs().flatten(1).amax(1) > 0).all(), f"every {kind} anomaly changes its image"
    again = synthetic_validation(held, size=32, draws=2)
    assert torch.equal(again.images, validation.images) and again.digest == validation.digest, "seeded"
    other = synthetic_validation(held, size=32, draws=2, seed=1)
    assert other.digest != validation.digest, "the digest names the anomalies, not just the images"


def test_only_the_voting_kinds_make_val_auroc():
    """A detector that flags only the reported kinds (perlin, stroke) scores 0.5 on val_auroc: those kinds
    resemble training views and never vote; a detector that flags the voting kinds scores 1."""
    images = torch.full((4, 3, 32, 32), 100, dtype=torch.uint8)
    kinds = ["good"] * 4 + [k for k in ANOMALY_KINDS for _ in range(4)]
    validation = ValidationSet(images=images, labels=[0 if k == "good" else 1 for k in kinds], kinds=kinds, source="")
    reported_only = torch.tensor([1.0 if k in REPORTED_KINDS else 0.0 for k in kinds])
    voting_only = torch.tensor([1.0 if k in VOTING_KINDS else 0.0 for k in kinds])
    assert score_validation(reported_only, validation)["val_auroc"] == 0.5
    assert score_validation(reported_only, validation)["val_auroc_stroke"] == 1.0, "reported, per kind"
    assert score_validation(voting_only, validation)["val_auroc"] == 1.0


def test_blobs_share_no_area_range_with_training_views():
    """Blob areas stay inside BLOB_AREA (0.8-2 %): above the largest scar (16 x 25 of 256 x 256 px) and
    below CutPaste's and blend's smallest patch (2 %), so no kind that votes copies a training view's size."""
    masks, _, _ = blob_masks(256, 128, torch.Generator().manual_seed(0))
    area = masks.float().mean((1, 2))
    assert area.min() > 16 * 25 / 256**2 and area.max() < 0.02 * 1.35
    assert BLOB_AREA[0] > 16 * 25 / 256**2 and BLOB_AREA[1] <= 0.02


def test_pixel_statistics_do_not_saturate_the_voting_kinds():
    """Global colour statistics (per-image mean and std) must not solve a voting kind: on textured normals
    whose brightness and contrast vary from image to image as a real line's do, each kind's AUROC under
    them stays well below 1."""
    generator = torch.Generator().manual_seed(0)

    def normals(n: int) -> torch.Tensor:
        level = 70 + 60 * torch.rand(n, 1, 1, 1, generator=generator)
        contrast = 20 + 40 * torch.rand(n, 1, 1, 1, generator=generator)
        return (level + contrast * torch.rand(n, 3, 64, 64, generator=generator)).round().to(torch.uint8)

    base, train = normals(64), normals(64)
    normal = pixel_statistics_scores(train, base)
    for kind, make in VOTING_KINDS.items():
        made, _ = make(base, torch.Generator().manual_seed(1))
        scores = torch.cat([normal, pixel_statistics_scores(train, made)])
        labels = [0] * len(base) + [1] * len(made)
        assert roc_auc_score(labels, scores.numpy()) < 0.9, kind


def test_anomalies_are_local():
    images = (torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    for kind, make in ANOMALY_KINDS.items():
        out, masks = make(images, torch.Generator().manual_seed(1))
        assert out.shape == images.shape and out.dtype == torch.uint8 and masks.shape == (4, 64, 64)
        assert masks.flatten(1).any(1).all(), f"{kind}: never an empty mask"
        far = ~torch.nn.functional.max_pool2d(masks[:, None].float(), 9, 1, 4)[:, 0].bool()
        assert torch.equal(out.permute(0, 2, 3, 1)[far], images.permute(0, 2, 3, 1)[far]), kind


def test_strokes_are_thin_curves_that_change_what_their_mask_covers():
    images = torch.full((16, 3, 128, 128), 128, dtype=torch.uint8)
    out, masks = stroke_anomalies(images, torch.Generator().manual_seed(0))
    again, _ = stroke_anomalies(images, torch.Generator().manual_seed(0))
    assert torch.equal(out, again), "seeded"
    area = masks.flatten(1).float().mean(1)
    assert (area > 0).all() and (area < 0.03).all(), "never empty, and thin: a few percent of the image at most"
    changed = (out.int() - images.int()).abs().amax(1) > 0
    assert not (changed & ~masks).any(), "the mask holds every changed pixel"
    assert changed[masks].float().mean() > 0.9, "and hardly any unchanged ones (the faintest edge may round away)"
    # Thin: eroding the mask by a 5 px square leaves almost nothing.
    core = -torch.nn.functional.max_pool2d(-masks[:, None].float(), 5, 1, 2)[:, 0]
    assert core.sum() <= 0.1 * masks.sum()


def test_pixel_validation_reads_the_masks_of_the_voting_kinds(synth_root):
    """Maps equal to the masks score 1; maps that light up only the reported kinds' pixels (perlin,
    stroke) score 0.5 on the objective but 1 on those kinds; a set without masks is refused."""
    _, held = split_train(list_samples(synth_root, "synth_disc", "train"), folds=4)
    validation = synthetic_validation(held, size=32, draws=1)
    masks = validation.masks
    assert masks.shape == (len(validation.kinds), 32, 32) and not masks[: len(held)].any()
    assert all(masks[i].any() for i, k in enumerate(validation.kinds) if k != "good")
    perfect = score_validation_maps(masks.float()[:, ::2, ::2].contiguous(), validation)  # upsampled inside
    assert perfect["val_pixel_auroc"] > 0.95 and set(perfect) >= {f"val_pixel_auroc_{k}" for k in ANOMALY_KINDS}
    reported = torch.tensor([k not in VOTING_KINDS and k != "good" for k in validation.kinds])
    only_reported = masks.float() * reported[:, None, None]
    got = score_validation_maps(only_reported, validation)
    assert got["val_pixel_auroc"] == pytest.approx(0.5)
    assert got["val_pixel_auroc_perlin"] == pytest.approx(1.0) and got["val_pixel_auroc_dent"] == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="masks"):
        score_validation_maps(masks.float(), ValidationSet(validation.images, validation.labels, validation.kinds, ""))
