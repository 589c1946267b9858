"""The calibrated threshold: the quantile or target false-positive rate, and an honest interval."""

from __future__ import annotations

import pytest
import torch

from cutpaste.config import preset
from cutpaste.errors import ConfigError
from cutpaste.threshold import calibrate, threshold_quantile


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
