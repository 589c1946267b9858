"""Patch geometry, grid densities, dense scoring, upsampling, GradCAM and the localize commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.covariance import LedoitWolf

from cutpaste.cli import main
from cutpaste.detector import Detector
from cutpaste.errors import ConfigError
from cutpaste.localization.gradcam import gradcam_maps
from cutpaste.model.dense import dense_embeddings, upsample_scores
from cutpaste.model.network import CutPasteNet
from cutpaste.model.patches import grid_patches, grid_size, random_crops
from cutpaste.presets import preset
from cutpaste.scoring.gaussian import GaussianDensity
from cutpaste.scoring.grid_gaussians import LocalDensity, ledoit_wolf, resolve_layout
from cutpaste.workflow import evaluate_category, train_category
from tests.conftest import write_tiny_category


def test_grid_geometry_matches_the_paper_and_rejects_bad_sizes():
    assert grid_size(256, 32, 4) == 57
    assert grid_size(64, 32, 8) == 5
    with pytest.raises(ConfigError, match="patch_stride"):
        grid_size(256, 32, 0)
    with pytest.raises(ConfigError, match="larger than the image"):
        grid_size(64, 96, 4)
    with pytest.raises(ConfigError, match="patch_size"):
        preset("ci").override({"patch_size": 128})
    with pytest.raises(ConfigError, match="patch_stride"):
        preset("ci").override({"patch_size": 32, "patch_stride": 0})
    with pytest.raises(ConfigError, match="local_density"):
        preset("ci").override({"local_density": "everywhere"})


def test_crops_and_grid_patches_are_the_slices_they_claim():
    images = torch.rand(5, 3, 20, 20)
    patches = grid_patches(images, 8, 4)  # (5, 4, 4, 3, 8, 8)
    assert patches.shape == (5, 4, 4, 3, 8, 8)
    assert torch.equal(patches[2, 1, 3], images[2, :, 4:12, 12:20])
    generator = torch.Generator().manual_seed(0)
    crops = random_crops(images, 8, generator)
    again = random_crops(images, 8, torch.Generator().manual_seed(0))
    assert torch.equal(crops, again)
    for i in range(5):  # each crop is a window of its own image
        windows = images[i].unfold(1, 8, 1).unfold(2, 8, 1).permute(1, 2, 0, 3, 4).reshape(-1, 3, 8, 8)
        assert (windows - crops[i]).abs().flatten(1).sum(1).min() == 0


def test_batched_ledoit_wolf_matches_sklearn():
    x = torch.randn(4, 25, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x * torch.linspace(0.2, 2.0, 12, dtype=torch.float64)
    mean, covariance, shrinkage = ledoit_wolf(x)
    for i in range(4):
        reference = LedoitWolf().fit(x[i].numpy())
        np.testing.assert_allclose(covariance[i].numpy(), reference.covariance_, rtol=1e-10, atol=1e-12)
        assert shrinkage[i].item() == pytest.approx(reference.shrinkage_)
        np.testing.assert_allclose(mean[i].numpy(), reference.location_)


def _two_place_features(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Position 0 always looks like ``a``, position 1 like ``b`` (an aligned object)."""
    a, b = torch.zeros(16), torch.zeros(16)
    a[0], b[1] = 1.0, 1.0
    noise = 0.05 * torch.randn(n, 2, 16, generator=generator)
    return torch.stack([a, b])[None] + noise, a, b


def test_per_location_density_flags_a_normal_feature_in_the_wrong_place():
    generator = torch.Generator().manual_seed(0)
    train, a, b = _two_place_features(60, generator)
    # A 2 x 2 grid: the two-place pattern repeated.
    train4 = torch.cat([train, train], 1)  # positions 0..3: a, b, a, b
    swapped = torch.stack([b, a, a, b])[None] + 0.05 * torch.randn(1, 4, 16, generator=generator)
    normal = torch.stack([a, b, a, b])[None] + 0.05 * torch.randn(1, 4, 16, generator=generator)
    local = LocalDensity.fit(train4, layout="per_location", grid=2, dim=8)
    shared = LocalDensity.fit(train4, layout="shared", grid=2)
    assert local.score(swapped)[0, 0] > 5 * local.score(normal)[0, 0]
    # One shared Gaussian has seen both features everywhere: the swap goes unnoticed.
    assert shared.score(swapped)[0, 0] < 2 * shared.score(normal)[0, 0]
    again = LocalDensity.from_state_dict(local.state_dict())
    assert torch.equal(again.score(swapped), local.score(swapped))


def test_auto_layout_follows_the_paper_grouping():
    assert resolve_layout("auto", "bottle") == "per_location"
    assert resolve_layout("auto", "screw") == "shared"
    assert resolve_layout("auto", "carpet") == "shared"
    assert resolve_layout("auto", "my_part") == "shared"
    assert resolve_layout("per_location", "carpet") == "per_location"


def test_dense_embeddings_equal_encoding_each_patch_alone():
    torch.manual_seed(0)
    model = CutPasteNet("resnet18", num_classes=2).eval()
    images = torch.randint(0, 255, (2, 3, 48, 48), dtype=torch.uint8)
    dense = dense_embeddings(model, images, image_size=48, patch_size=32, stride=8, patch_batch_size=3)
    assert dense.shape == (2, 9, 512)
    x = images.float() / 255
    with torch.no_grad():
        alone = model.embed(x[1:2, :, 8:40, 16:48])  # row 1, column 2 of the 3 x 3 grid
    torch.testing.assert_close(dense[1, 1 * 3 + 2], alone[0], rtol=1e-4, atol=1e-5)


def test_upsampling_keeps_constants_and_puts_a_hot_patch_where_it_was():
    flat = upsample_scores(torch.full((1, 5, 5), 3.0), image_size=64, patch_size=32, stride=8)
    assert flat.shape == (1, 64, 64)
    torch.testing.assert_close(flat, torch.full_like(flat, 3.0))
    grid = torch.zeros(1, 5, 5)
    grid[0, 4, 0] = 1.0  # the bottom-left patch covers rows 32..63, columns 0..31
    hot = upsample_scores(grid, image_size=64, patch_size=32, stride=8)[0]
    row, col = divmod(int(hot.argmax()), 64)
    assert row >= 40 and col <= 24
    odd = upsample_scores(torch.rand(2, 4, 4), image_size=59, patch_size=32, stride=8)
    assert odd.shape == (2, 59, 59)  # (59 - 32) is not a multiple of 8: the last pixels are padded


def test_gradcam_maps_are_scaled_by_the_anomaly_score():
    torch.manual_seed(0)
    model = CutPasteNet("resnet18", num_classes=2).eval()
    train = torch.rand(12, 3, 64, 64)
    with torch.no_grad():
        density = GaussianDensity.fit(model.embed(train))
    images = torch.rand(3, 3, 64, 64)
    scores, maps = gradcam_maps(model, density, images, image_size=64, batch_size=2)
    assert maps.shape == (3, 64, 64) and (maps >= 0).all()
    with torch.no_grad():
        expected = density.score(model.embed(images))
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(maps.flatten(1).amax(1).double(), expected, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def patch_run(tmp_path_factory) -> tuple[Path, Path, Detector]:
    root = tmp_path_factory.mktemp("loc")
    write_tiny_category(root / "data", size=64, train=8)
    config = preset("ci").override(
        {"steps": 6, "batch_size": 4, "patch_size": 32, "patch_stride": 8, "checkpoint_every": 3, "log_every": 3}
    )
    run = train_category(config, root / "data", "widget", root / "model", progress=False)
    return root / "data", root / "model", run.detector


@pytest.mark.slow
def test_patch_detector_round_trips_and_reports_pixel_metrics(patch_run):
    data, model_dir, detector = patch_run
    assert detector.is_patch_model and detector.grid.layout == "shared"  # unknown category: shared
    loaded = Detector.load(model_dir)
    images = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
    torch.testing.assert_close(loaded.score(images), detector.score(images))
    scores, maps = loaded.anomaly_maps(images)
    assert maps.shape == (2, 64, 64)
    # The paper's image score: the maximum of the raw patch-score grid, not of the smoothed map.
    torch.testing.assert_close(scores, loaded.grid_scores(images).flatten(1).amax(1).double())
    assert (scores >= maps.flatten(1).amax(1).double() - 1e-4).all(), "smoothing never raises the maximum"
    loaded.config = loaded.config.override({"patch_score": "map_max"})
    scores, maps = loaded.anomaly_maps(images)
    torch.testing.assert_close(scores, maps.flatten(1).amax(1).double())
    with pytest.raises(ConfigError, match="gradcam"):
        loaded.anomaly_maps(images, "gradcam")
    report = evaluate_category(loaded, data).to_dict()
    assert 0 <= report["pixel_auroc"] <= 1 and 0 <= report["aupro"] <= 1
    assert report["defect_regions"] == 3


@pytest.mark.slow
def test_localize_and_predict_write_pictures(patch_run, tmp_path, capsys):
    data, model_dir, _ = patch_run
    out = tmp_path / "maps"
    assert main(["localize", "--model", str(model_dir), "--data", str(data), "--out", str(out), "--no-progress"]) == 0
    assert len(list((out / "crack").glob("*.png"))) == 3 and len(list((out / "good").glob("*.png"))) == 3
    assert Image.open(out / "widget_grid.png").size[0] > 64
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"pixel_auroc", "aupro", "image_auroc"} <= metrics.keys()
    panel = Image.open(out / "crack" / "000.png")
    assert panel.size[1] >= 64 and panel.size[0] >= 3 * 64
    heat = tmp_path / "heat"
    capsys.readouterr()
    image = data / "widget" / "test" / "crack" / "000.png"
    assert main(["predict", "--model", str(model_dir), "--heatmap", str(heat), str(image), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert (heat / "000.png").is_file() and rows[0]["score"] > 0


@pytest.mark.slow
def test_missing_and_empty_masks_are_reported_not_fatal(patch_run, tmp_path):
    data, _, detector = patch_run
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    # One all-zero mask: counted. Then no masks at all: pixel metrics skipped, image metrics still there.
    mask = copy / "widget" / "ground_truth" / "crack" / "000_mask.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(mask)
    report = evaluate_category(detector, copy).to_dict()
    assert report["empty_masks"] == 1 and "all-zero" in report["pixel_note"]
    shutil.rmtree(copy / "widget" / "ground_truth")
    with pytest.warns(UserWarning):
        report = evaluate_category(detector, copy).to_dict()
    assert "pixel_auroc" not in report and "skipped" in report["pixel_note"] and report["image_auroc"] >= 0


def test_a_position_that_never_changes_still_gets_a_proper_gaussian():
    features = torch.randn(10, 4, 8, generator=torch.Generator().manual_seed(0))
    features[:, 0] = torch.ones(8)  # a black corner: the same feature in every training image
    local = LocalDensity.fit(features, layout="per_location", grid=2, dim=4)
    assert torch.isfinite(local.precision).all()
    probe = features[:1].clone()
    probe[0, 0, 0] += 0.5
    scores = local.score(torch.cat([features[:1], probe]))
    assert torch.isfinite(scores).all() and scores[1, 0] > scores[0, 0]


def test_the_config_can_ask_for_feature_map_maps_beside_the_global_score(tmp_path):
    """``map_scorer=local``: the paper's global score, maps from the feature-map scorer (no GradCAM); the
    score is exactly the plain global detector's, and the saved bundle keeps both."""
    from cutpaste.fit import fit_detector
    from cutpaste.model.network import build_model

    base = preset("ci").override({"image_size": 64, "local_grid": 4, "feature_density": "knn"})
    images = torch.randint(0, 256, (12, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    model = build_model(base).eval()
    plain = fit_detector(model, images, base, category="widget")
    mapped = fit_detector(model, images, base.override({"map_scorer": "local"}), category="widget")
    assert plain.grid is None and mapped.grid is not None and mapped.scoring.image_score == "global"
    torch.testing.assert_close(mapped.score(images[:4]), plain.score(images[:4]), rtol=0, atol=0)
    assert mapped.threshold == plain.threshold
    with pytest.raises(ConfigError, match="scores globally"):
        plain.anomaly_maps(images[:2], "local")
    scores, maps = Detector.load(mapped.save(tmp_path / "m")).anomaly_maps(images[:2])  # auto: the grid's
    torch.testing.assert_close(scores, plain.score(images[:2]), rtol=0, atol=0)
    torch.testing.assert_close(maps, mapped.anomaly_maps(images[:2], "local")[1])
    assert not torch.allclose(maps, plain.anomaly_maps(images[:2])[1]), "not GradCAM's maps"
    with pytest.raises(ConfigError, match="map_scorer: local applies to the image-level model"):
        base.override({"map_scorer": "local", "patch_size": 32})
    with pytest.raises(ConfigError, match="map_scorer: unknown 'gradcam'"):
        base.override({"map_scorer": "gradcam"})
