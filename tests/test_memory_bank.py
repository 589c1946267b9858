"""The k-NN memory bank: exact distances, a bounded seeded bank, and detectors that save and load it."""

from __future__ import annotations

import pytest
import torch

from cutpaste.detector import Detector
from cutpaste.errors import ConfigError
from cutpaste.fit import fit_detector
from cutpaste.model.network import build_model
from cutpaste.presets import preset
from cutpaste.scoring.feature_maps import image_and_grid_features
from cutpaste.scoring.grid_gaussians import LocalDensity
from cutpaste.scoring.memory_bank import MemoryBank
from cutpaste.scoring.registry import fit_scorer, load_scorer, scorer_state


def _two_modes(n: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, 4, 8)`` features: every position is one of two far-apart normal kinds (dark ring, light wood)."""
    centres = torch.stack([torch.full((8,), -3.0), torch.full((8,), 3.0)])
    which = torch.randint(0, 2, (n, 4), generator=generator)
    return centres[which] + 0.1 * torch.randn(n, 4, 8, generator=generator)


def test_distances_are_the_exact_nearest_neighbour_distances():
    generator = torch.Generator().manual_seed(0)
    train, query = torch.randn(5, 4, 8, generator=generator), torch.randn(3, 4, 8, generator=generator)
    for k in (1, 3):
        bank = MemoryBank.fit(train, grid=2, k=k)
        brute = torch.cdist(query.reshape(-1, 8), train.reshape(-1, 8)).topk(k, largest=False).values.mean(1)
        assert torch.allclose(bank.score(query), brute.view(3, 4), atol=1e-4)
    # A training feature is at distance zero from itself, and a feature close to the bank far from the
    # origin gets its true small distance: no digits lost to |a|^2 - 2 a.b + |b|^2 in float32.
    assert MemoryBank.fit(train, grid=2).score(train).abs().max() == 0
    far = 100 + train
    near = far + 1e-2 * torch.sign(torch.randn(far.shape, generator=generator))
    expected = torch.full((5, 4), 1e-2 * 8**0.5)
    torch.testing.assert_close(MemoryBank.fit(far, grid=2).score(near), expected, rtol=1e-3, atol=0)


def test_the_bank_flags_what_lies_between_two_normal_modes_where_a_gaussian_does_not():
    generator = torch.Generator().manual_seed(0)
    train, normal = _two_modes(40, generator), _two_modes(1, generator)
    between = torch.zeros(1, 4, 8)  # the midpoint of the two kinds: never seen, inside their ellipsoid
    bank = fit_scorer("knn", train, grid=2, dim=8, seed=0)
    assert isinstance(bank, MemoryBank)
    assert bank.score(between).min() > 20 * bank.score(normal).max()
    gaussian = LocalDensity.fit(train, layout="shared", grid=2)
    assert gaussian.score(between).min() < gaussian.score(normal).max()


def test_the_bank_is_capped_by_a_seeded_subset_and_round_trips():
    features = torch.randn(10, 16, 4, generator=torch.Generator().manual_seed(1))
    a = MemoryBank.fit(features, grid=4, max_size=50, seed=3)
    b = MemoryBank.fit(features, grid=4, max_size=50, seed=3)
    assert a.bank.shape == (50, 4) and torch.equal(a.bank, b.bank)
    assert not torch.equal(a.bank, MemoryBank.fit(features, grid=4, max_size=50, seed=4).bank)
    again = load_scorer(scorer_state("knn", a))
    assert isinstance(again, MemoryBank) and torch.equal(again.score(features), a.score(features))
    assert a.summary()["local_bank_size"] == 50.0
    with pytest.raises(ValueError, match="positions"):
        MemoryBank.fit(features, grid=3)
    with pytest.raises(ValueError, match="at least 2 images"):
        MemoryBank.fit(features[:1], grid=4)


def test_a_detector_scored_by_a_memory_bank_saves_and_loads(tmp_path):
    config = preset("ci").override(
        {"image_score": "local", "feature_density": "knn", "local_stage": 2, "local_grid": 4, "image_size": 32}
    )
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    detector = fit_detector(build_model(config).eval(), images, config, category="widget")
    assert isinstance(detector.grid, MemoryBank)
    assert detector.meta["local_layout"] == "knn"
    detector.save(tmp_path)
    loaded = Detector.load(tmp_path)
    assert isinstance(loaded.grid, MemoryBank)
    assert torch.allclose(loaded.score(images), detector.score(images))


def test_max_median_scores_an_image_by_its_peak_over_its_own_typical_position():
    config = preset("ci").override(
        {"image_score": "local", "feature_density": "knn", "local_stage": 2, "local_grid": 4, "image_size": 32}
    )
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    relative = config.override({"feature_score": "max-median"})
    detector = fit_detector(build_model(relative).eval(), images, relative, category="widget")
    _, grid = detector._image_scores(images)
    flat = grid.flatten(1).double()
    torch.testing.assert_close(detector.score(images), flat.amax(1) - flat.median(1).values)
    assert bool((detector.score(images) >= 0).all())


def test_a_bad_layout_names_the_field():
    with pytest.raises(ConfigError, match="feature_density"):
        preset("ci").override({"feature_density": "nearest"})


def test_a_bank_scores_a_feature_by_its_nearest_training_features_and_keeps_them_through_save():
    generator = torch.Generator().manual_seed(0)
    train, query = torch.randn(6, 9, 5, generator=generator), torch.randn(3, 9, 5, generator=generator)
    bank = fit_scorer("knn", train, grid=3, dim=4, seed=0)
    flat = train.reshape(-1, 5)
    expected = torch.cdist(query.reshape(-1, 5), flat).min(1).values.view(3, 9)
    torch.testing.assert_close(bank.score(query), expected, rtol=1e-5, atol=1e-5)
    # A bump at one position stands out there and nowhere else.
    bumped = query.clone()
    bumped[:, 4] += 5
    assert bool((bank.score(bumped)[:, 4] > bank.score(query)[:, 4]).all())
    torch.testing.assert_close(bank.score(bumped)[:, :4], bank.score(query)[:, :4])
    again = load_scorer(scorer_state("knn", bank))
    assert isinstance(again, MemoryBank) and set(bank.state_dict()) == {"layout", "grid", "bank", "k"}
    torch.testing.assert_close(again.score(query), bank.score(query))


def test_two_stacked_stages_give_each_position_both_stages_pooled_to_the_grid(tmp_path):
    """feature_stages=2: layer1's map pooled to the grid, then layer2's, side by side at every position;
    a detector on them saves, loads and scores the same."""
    one = preset("ci").override(
        {"image_score": "local", "feature_density": "knn", "local_stage": 2, "local_grid": 4, "image_size": 32}
    )
    two = one.override({"feature_stages": 2})
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    model = build_model(two).eval()
    _, stacked = image_and_grid_features(model, images, two)
    _, layer2 = image_and_grid_features(model, images, one)
    _, layer1 = image_and_grid_features(model, images, one.override({"local_stage": 1}))
    assert stacked.shape == (6, 16, layer1.shape[-1] + layer2.shape[-1])
    torch.testing.assert_close(stacked, torch.cat([layer1, layer2], dim=-1))
    detector = fit_detector(model, images, two, category="widget")
    assert detector.grid.bank.shape[-1] == stacked.shape[-1]
    detector.save(tmp_path)
    loaded = Detector.load(tmp_path)
    assert loaded.config.feature_stages == 2
    torch.testing.assert_close(loaded.score(images), detector.score(images))
