"""Every scorer behind one interface: fitted by kind, scores, saved with its kind and read back alone."""

from __future__ import annotations

import pytest
import torch

from cutpaste.errors import ModelBundleError
from cutpaste.scoring.folds import fold_parts, out_of_fold
from cutpaste.scoring.registry import SCORERS, fit_scorer, load_scorer, register, scorer_state


@pytest.mark.parametrize("kind", sorted(SCORERS))
def test_each_kind_fits_scores_and_round_trips(kind):
    generator = torch.Generator().manual_seed(0)
    grid = SCORERS[kind].grid
    shape = (12, 4, 6) if grid else (12, 6)

    # Normal features lie close around one direction (the Gaussians compare directions), anomalies spread wide.
    def around(spread: float, n: int) -> torch.Tensor:
        return 1.0 + spread * torch.randn(n, *shape[1:], generator=generator)

    train, query, far = around(0.1, 12), around(0.1, 3), around(1.5, 3)
    scorer = fit_scorer(kind, train, grid=2, dim=3, seed=0)
    scores = scorer.score(query)
    assert scores.shape == ((3, 4) if grid else (3,))
    assert scorer.score(far).min() > scores.max(), "what lies far from the normal features is anomalous"
    again = load_scorer(scorer_state(kind, scorer))
    assert type(again) is type(scorer)
    torch.testing.assert_close(again.score(query), scores)


def test_an_unknown_or_malformed_saved_scorer_is_refused_by_name():
    with pytest.raises(ModelBundleError, match="kind 'lion' is not registered"):
        load_scorer({"kind": "lion", "state": {}})
    with pytest.raises(ModelBundleError, match="no 'kind' and 'state'"):
        load_scorer({"layout": "knn"})
    with pytest.raises(ValueError, match="unknown kind 'lion'"):
        fit_scorer("lion", torch.zeros(2, 2))
    with pytest.raises(ValueError, match="registered already"):
        register("knn", fit=fit_scorer, load=load_scorer, grid=True)


def test_out_of_fold_scores_each_sample_and_each_anomaly_without_its_fold():
    """A scorer that remembers what it was fitted on: a sample (or an anomaly made from it) is never
    scored by one that saw it."""

    class Memo:
        def __init__(self, seen):
            self.seen = set(seen[:, 0].long().tolist())

        def score(self, x):
            return torch.tensor([float(int(v) in self.seen) for v in x[:, 0]])

    features = torch.arange(20.0)[:, None]
    anomaly_base = torch.tensor([0, 5, 5, 19])
    normal, anomalous = out_of_fold(Memo, features, anomalies=features[anomaly_base], anomaly_base=anomaly_base)
    assert normal.tolist() == [0.0] * 20 and anomalous.tolist() == [0.0] * 4
    assert len(fold_parts(20)) == 5 and sorted(torch.cat(fold_parts(20)).tolist()) == list(range(20))
