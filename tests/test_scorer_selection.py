"""image_score=auto chooses on validation made from the training images, records why, and keeps its choice."""

from __future__ import annotations

import pytest
import torch

from cutpaste.anomalies.kinds import VOTING_KINDS
from cutpaste.data import list_samples, load_images
from cutpaste.data.synth import generate_dataset
from cutpaste.detector import Detector
from cutpaste.presets import preset
from cutpaste.scoring.baselines import untrained_detector
from cutpaste.scoring.choice import Scoring
from cutpaste.scoring.folds import fold_parts
from cutpaste.scoring.selection import (
    CANDIDATES,
    Candidate,
    Selection,
    _candidate_scores,
    select_image_score,
)


@pytest.fixture(scope="module")
def weave(tmp_path_factory) -> torch.Tensor:
    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, categories=["synth_weave"], size=64, train_count=16, test_good=1, test_defect_per_type=1)
    return load_images([s.path for s in list_samples(root, "synth_weave", "train")], 64)


@pytest.fixture(scope="module")
def small():
    return preset("short").override({"image_size": 64, "local_grid": 4, "eval_batch_size": 32})


def test_auto_picks_the_best_candidate_on_validation_and_the_bundle_keeps_it(weave, small, tmp_path):
    detector = untrained_detector(small, weave, category="synth_weave")
    record = detector.meta["image_score_selection"]
    assert set(record["val_auroc"]) == {c.name for c in CANDIDATES}
    # Only the kinds that copy no training view rank candidates (perlin and stroke never vote).
    assert all(set(v) == set(VOTING_KINDS) for v in record["val_auroc_per_kind"].values())
    assert record["normals"] == len(weave) and record["anomalies"] == len(weave) * len(VOTING_KINDS)
    assert record["kinds_ranked_on"] == list(VOTING_KINDS)
    best = max(record["val_auroc"].values())
    assert record["val_auroc"][record["chosen"]] == best
    chosen = next(c for c in CANDIDATES if c.name == record["chosen"])
    maps_from = next(c for c in CANDIDATES if c.name == record["maps_from"])
    assert detector.config.image_score == "auto", "the config stays as asked; the choice is recorded beside it"
    assert detector.scoring.image_score == chosen.image_score and maps_from.image_score != "global"
    assert detector.scoring.chosen_by == "validation"
    assert detector.grid is not None, "the anomaly maps come from a feature map whatever scores images"
    if maps_from.feature_density == "knn":
        assert detector.scoring.feature_density == "knn"
    assert detector.scoring.feature_score == maps_from.feature_score
    loaded = Detector.load(detector.save(tmp_path / "bundle").parent)
    assert loaded.config == detector.config and loaded.scoring == detector.scoring
    assert loaded.meta["image_score_selection"] == record
    torch.testing.assert_close(loaded.score(weave[:4]), detector.score(weave[:4]))


def test_float_and_non_square_training_images_are_taken_as_the_detector_sees_them(weave, small):
    from cutpaste.model.network import build_model

    model = build_model(small).eval()
    wide = torch.nn.functional.interpolate(weave.float() / 255, size=(64, 80), mode="bilinear")
    selection = select_image_score(model, wide, small, category="synth_weave")
    assert selection.normals == len(weave) and set(selection.auroc) == {c.name for c in CANDIDATES}


def test_selection_is_deterministic_under_the_seed(weave, small):
    torch.manual_seed(small.seed)
    from cutpaste.model.network import build_model

    model = build_model(small).eval()
    first = select_image_score(model, weave, small, category="synth_weave")
    again = select_image_score(model, weave, small, category="synth_weave")
    assert first.auroc == again.auroc and first.chosen == again.chosen
    other = select_image_score(model, weave, small.override({"seed": 1}), category="synth_weave")
    assert other.auroc != first.auroc, "the seed draws the anomalies and the folds"


def _selection(name: str, auroc: dict[str, float] | None = None) -> Selection:
    chosen = next(c for c in CANDIDATES if c.name == name)
    return Selection(chosen=chosen, auroc=auroc or {}, per_kind={}, kinds=[], normals=0, anomalies=0)


def test_the_chosen_scoring_keeps_the_configured_layout_unless_the_candidate_names_the_bank(small):
    def scoring(name: str, config=small) -> Scoring:
        return _selection(name).scoring(config)

    per_location = small.override({"feature_density": "per_location"})
    assert scoring("local", per_location) == Scoring("local", "per_location", "max", "validation")
    assert scoring("global").image_score == "global"
    assert scoring("knn-relative", per_location) == Scoring("local", "knn", "max-median", "validation")
    # The candidate's own grid score, not the config's: what was validated is what ships.
    assert scoring("local", small.override({"feature_score": "max-median"})).feature_score == "max"


def test_candidates_score_from_their_own_layout():
    # Global scores (N, 1); a layout's position scores (N, positions), here two positions per image.
    normal = {"global": torch.tensor([[1.0], [3.0]]).double(), "knn": torch.tensor([[10.0, 0.0], [30.0, 2.0]]).double()}
    anomalous = {"global": torch.tensor([[5.0]]).double(), "knn": torch.tensor([[50.0, 4.0]]).double()}
    normal["auto"], anomalous["auto"] = normal["knn"] + 1, anomalous["knn"] + 1
    knn = _candidate_scores(Candidate("knn", "local", "knn"), normal, anomalous)
    torch.testing.assert_close(knn, torch.tensor([10.0, 30, 50]).double())  # each image's max, knn's layout
    local = _candidate_scores(Candidate("local", "local", "auto"), normal, anomalous)
    torch.testing.assert_close(local, torch.tensor([11.0, 31, 51]).double())  # the configured layout's
    plain = _candidate_scores(Candidate("global", "global", "auto"), normal, anomalous)
    assert torch.equal(plain[2:], anomalous["global"][:, 0])
    # max-median: with two positions the median is the lower one (torch's median of an even count).
    relative = _candidate_scores(Candidate("knn-relative", "local", "knn", "max-median"), normal, anomalous)
    torch.testing.assert_close(relative, torch.tensor([10.0, 28.0, 46.0]).double())


def test_ties_go_to_the_category_lookup(weave, small, monkeypatch):
    import cutpaste.scoring.selection as selection

    monkeypatch.setattr(selection, "roc_auc_score", lambda labels, scores: 0.5)
    from cutpaste.model.network import build_model

    model = build_model(small).eval()
    assert select_image_score(model, weave, small, category="bottle").chosen.name == "local"
    assert select_image_score(model, weave, small, category="carpet").chosen.name == "global"


def test_a_global_choice_keeps_the_best_feature_map_for_the_anomaly_maps(weave, small, monkeypatch):
    auroc = {"global": 0.9, "knn-relative": 0.85, "local": 0.7}
    selection = _selection("global", auroc)
    assert selection.maps_from.name == "knn-relative" and selection.to_dict()["maps_from"] == "knn-relative"
    assert selection.scoring(small) == Scoring("global", "knn", "max-median", "validation")

    import cutpaste.fit as fit_module

    monkeypatch.setattr(fit_module, "select_image_score", lambda *a, **k: selection)
    detector = untrained_detector(small, weave, category="synth_weave")
    assert detector.scoring.image_score == "global" and detector.grid is not None
    torch.testing.assert_close(detector.score(weave[:4]), detector.density.score(detector.embed(weave[:4])))
    scores, maps = detector.anomaly_maps(weave[:4])
    torch.testing.assert_close(scores, detector.score(weave[:4]))
    local_scores, local_maps = detector.anomaly_maps(weave[:4], "local")
    torch.testing.assert_close(maps, local_maps)  # the feature-map maps, not GradCAM's
    torch.testing.assert_close(local_scores, scores)
    assert detector.meta["oof_scores"], "calibrated on the global score's out-of-fold values"


class _Recorder:
    """Wraps a fit (a Gaussian's or a feature scorer's): keeps each fitted model's training rows and every
    batch it scored, so a test can say which images each density saw and which it judged."""

    def __init__(self, fit) -> None:
        self.fit_original, self.fits = fit, []

    def fit(self, features, *args, **kwargs):
        fitted = self.fit_original(features, *args, **kwargs)
        record = {"fitted": features.detach().cpu().clone(), "scored": []}
        self.fits.append(record)

        class Scorer:
            def score(self, batch):
                record["scored"].append(batch.detach().cpu().clone())
                return fitted.score(batch)

        return Scorer()


def _rows_to_images(rows: torch.Tensor, per_image: torch.Tensor) -> set[int]:
    """Which training image each row is (exactly): ``rows`` ``(K, ...)`` among ``per_image`` ``(N, ...)``."""
    same = (rows.flatten(1)[:, None] == per_image.flatten(1)[None]).all(-1)  # (K, N)
    assert (same.sum(1) == 1).all(), "every row is exactly one training image's features"
    return set(same.int().argmax(1).tolist())


def test_no_image_is_scored_by_a_density_fitted_on_it_or_on_its_anomalys_base(weave, small, monkeypatch):
    """Anomalies are made here as exact copies of their base image, so an anomaly's features are its base's:
    a density fitted on a fold that holds the base would see the anomaly's own features in training."""
    import cutpaste.scoring.selection as selection
    from cutpaste.model.network import build_model

    bases_seen: list[torch.Tensor] = []

    def copy_of_base(images, generator):
        bases_seen.append((images.flatten(1)[:, None] == weave.flatten(1)[None]).all(-1).int().argmax(1))
        return images.clone(), torch.zeros(images.shape[0], *images.shape[2:], dtype=torch.bool)

    features: list[tuple[torch.Tensor, torch.Tensor]] = []

    def exact_features(model, images, config, **kwargs):
        if features:  # the anomalies: exactly their bases' features (no batch-to-batch rounding)
            bases = torch.cat(bases_seen)
            return features[0][0][bases], features[0][1][bases]
        features.append(selection_features(model, images, config, **kwargs))
        return features[0]

    selection_features = selection.image_and_grid_features
    gaussian, scorer = _Recorder(selection.GaussianDensity.fit), _Recorder(selection.fit_feature_scorer)
    monkeypatch.setattr(selection, "VOTING_KINDS", {kind: copy_of_base for kind in VOTING_KINDS})
    monkeypatch.setattr(selection, "image_and_grid_features", exact_features)
    monkeypatch.setattr(selection, "GaussianDensity", type("Recorded", (), {"fit": staticmethod(gaussian.fit)}))
    monkeypatch.setattr(selection, "fit_feature_scorer", scorer.fit)
    select_image_score(build_model(small).eval(), weave, small, category="synth_weave")

    n, anomalies = len(weave), sum(len(b) for b in bases_seen)
    folds = len(fold_parts(n, folds=5, seed=small.seed))  # the selection's default, as the detector's
    for recorder, per_image in ((gaussian, features[0][0]), (scorer, features[0][1])):
        scored_rows = 0
        for record in recorder.fits:
            fitted = _rows_to_images(record["fitted"], per_image)
            for batch in record["scored"]:
                scored_rows += len(batch)
                assert not fitted & _rows_to_images(batch, per_image), "scored with its own image in the fit"
        assert scored_rows == (n + anomalies) * len(recorder.fits) // folds, "each image scored once per layout"
