"""The calibrated threshold: the quantile or target false-positive rate, and an honest interval."""

from __future__ import annotations

import pytest
import torch

from cutpaste.errors import ConfigError
from cutpaste.presets import preset
from cutpaste.scoring.threshold import calibrate, threshold_quantile


def test_target_fpr_replaces_the_quantile():
    assert threshold_quantile(preset("ci")) == 0.99
    assert threshold_quantile(preset("ci").override({"target_fpr": 0.05})) == pytest.approx(0.95)
    with pytest.raises(ConfigError, match="target_fpr"):
        preset("ci").override({"target_fpr": 1.5})


def test_expected_fpr_and_interval_shrink_with_more_normal_scores():
    generator = torch.Generator().manual_seed(0)
    few = calibrate(torch.randn(200, generator=generator), 0.95, seed=0)
    many = calibrate(torch.randn(20000, generator=generator), 0.95, seed=0)
    for c in (few, many):
        assert c.fpr_low <= c.expected_fpr <= c.fpr_high
        assert c.expected_fpr == pytest.approx(0.05, abs=0.01)
    assert (many.fpr_high - many.fpr_low) < (few.fpr_high - few.fpr_low) / 5
    # On fresh normal data the realised rate of the 200-score threshold falls inside its interval.
    fresh = torch.randn(100000, generator=generator)
    realised = float((fresh >= few.threshold).double().mean())
    assert few.fpr_low - 0.01 <= realised <= few.fpr_high + 0.01
    assert calibrate(torch.arange(10.0), 0.5, seed=3) == calibrate(torch.arange(10.0), 0.5, seed=3)


def test_too_few_scores_are_refused():
    with pytest.raises(ValueError, match="at least 2"):
        calibrate(torch.tensor([1.0]), 0.9)


def _embeddings(n: int, spread: float, seed: int) -> torch.Tensor:
    """``(n, 16)`` normal images' embeddings around one direction; ``spread`` < 1 is how much tighter an
    encoder packs the images it trained on than fresh ones of the same kind."""
    centre = torch.zeros(16)
    centre[0] = 4.0
    return centre + spread * torch.randn(n, 16, generator=torch.Generator().manual_seed(seed))


def _realised_against_expected(monkeypatch, train_spread: float, runs: int = 20) -> tuple[float, float, float]:
    """The product's calibration (``fit_detector``: out-of-fold scores of the training embeddings, target
    FPR 5 %) on 200 training embeddings, then its threshold on 20,000 fresh normal embeddings, ``runs`` times:
    the mean realised FPR, the mean expected one, and the share of runs whose realised FPR fell inside the
    stated 95 % interval."""
    import cutpaste.fit as fit
    from cutpaste.model.network import build_model

    config = preset("ci").override({"image_score": "global", "target_fpr": 0.05})
    model, realised, expected, inside = build_model(config), [], [], 0
    for seed in range(runs):
        train = _embeddings(200, train_spread, seed)
        monkeypatch.setattr(fit, "embed_images", lambda *args, train=train, **kwargs: train)
        fitted = fit.fit_detector(model, torch.zeros(200, 3, 8, 8, dtype=torch.uint8), config)
        fresh = fitted.density.score(_embeddings(20000, 1.0, 1000 + seed))
        rate, calibration = float((fresh >= fitted.threshold).double().mean()), fitted.meta["calibration"]
        realised.append(rate)
        expected.append(calibration["expected_fpr"])
        inside += calibration["fpr_low"] <= rate <= calibration["fpr_high"]
    return sum(realised) / runs, sum(expected) / runs, inside / runs


def test_out_of_fold_calibration_keeps_its_promise_on_fresh_normals_when_the_encoder_is_unbiased(monkeypatch):
    """Training and fresh embeddings alike: out-of-fold scores remove the density's own fitting bias, so the
    realised rate is the expected one and the 95 % interval holds it in most runs (measured: 0.057 mean, 90 %)."""
    realised, expected, coverage = _realised_against_expected(monkeypatch, train_spread=1.0)
    assert expected == pytest.approx(0.05, abs=0.005)
    assert realised == pytest.approx(expected, abs=0.015)
    assert coverage >= 0.8


def test_an_encoder_that_trained_on_its_calibration_images_breaks_the_promise(monkeypatch):
    """Documents a limit, not a wish: the encoder trains on the very images the threshold is calibrated on,
    and folds cannot undo that (every fold's images were seen in training). Training embeddings 10 % tighter
    than fresh ones already double the realised rate and leave it above the interval in most runs (measured
    with 20 runs: 0.115 realised against 0.05 expected; inside the interval 20 %). ``test_fpr`` in
    ``cutpaste evaluate --json`` shows the real rate on a test split's normal images."""
    realised, expected, coverage = _realised_against_expected(monkeypatch, train_spread=0.9)
    assert expected == pytest.approx(0.05, abs=0.005)
    assert realised > 1.8 * expected
    assert coverage <= 0.4
