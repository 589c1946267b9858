import numpy as np
import pytest
import torch
from sklearn.covariance import LedoitWolf

from cutpaste.scoring.folds import out_of_fold_scores
from cutpaste.scoring.gaussian import GaussianDensity


def test_mahalanobis_matches_a_direct_numpy_computation():
    gen = torch.Generator().manual_seed(0)
    train = torch.randn(80, 16, generator=gen)
    test = torch.randn(10, 16, generator=gen)
    density = GaussianDensity.fit(train)
    x = train.double() / train.double().norm(dim=1, keepdim=True)
    est = LedoitWolf().fit(x.numpy())
    t = (test.double() / test.double().norm(dim=1, keepdim=True)).numpy() - est.location_
    expected = np.sqrt(np.einsum("nd,de,ne->n", t, np.linalg.inv(est.covariance_), t))
    np.testing.assert_allclose(density.score(test).numpy(), expected, rtol=1e-6)
    assert 0 < density.shrinkage < 1


def test_small_sample_high_dimension_is_stable():
    # 60 samples of 512-d features: the sample covariance is singular, the shrunk one is not.
    features = torch.randn(60, 512, generator=torch.Generator().manual_seed(1))
    density = GaussianDensity.fit(features)
    scores = density.score(features)
    assert torch.isfinite(scores).all()
    assert np.isfinite(density.summary()["gde_logdet"])


def test_outliers_score_higher_and_state_round_trips():
    gen = torch.Generator().manual_seed(2)
    normal = torch.randn(200, 8, generator=gen) * 0.1 + torch.tensor([1.0] + [0.0] * 7)
    outlier = torch.randn(20, 8, generator=gen) * 0.1 + torch.tensor([0.0, 1.0] + [0.0] * 6)
    density = GaussianDensity.fit(normal)
    assert density.score(outlier).min() > density.score(normal[:50]).max()
    again = GaussianDensity.from_state_dict(density.state_dict())
    assert torch.equal(again.score(outlier), density.score(outlier))


def test_out_of_fold_scores_are_not_biased_low():
    features = torch.randn(100, 32, generator=torch.Generator().manual_seed(3))
    in_sample = GaussianDensity.fit(features).score(features)
    held_out = out_of_fold_scores(features)
    assert held_out.median() > in_sample.median()


def test_fit_rejects_bad_shapes():
    with pytest.raises(ValueError, match="N>=2"):
        GaussianDensity.fit(torch.randn(1, 4))
    with pytest.raises(ValueError, match="dimension"):
        GaussianDensity.fit(torch.randn(10, 4)).score(torch.randn(3, 5))
