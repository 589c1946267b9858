"""The `ci` preset learns something real on synthetic data: on `synth_disc` it reaches 0.9 image AUROC
and clearly beats both floors (global pixel statistics and the same network untrained).

One category keeps this inside the CI budget. The others are not asserted: at 64 px and 150 steps
`synth_bolt` lands below 0.9 and the synthetic textures do not get the proxy task off the ground (loss
stays at chance), as the closing notes of the library issue record with numbers.
"""

from __future__ import annotations

import pytest

from cutpaste.data import list_samples, load_images
from cutpaste.data.synth import generate_dataset
from cutpaste.evaluation.evaluate import evaluate_detector
from cutpaste.evaluation.metrics import image_metrics
from cutpaste.fit import fit_detector
from cutpaste.presets import preset
from cutpaste.scoring.baselines import pixel_statistics_scores, untrained_detector
from cutpaste.train.loop import train_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality") / "data"
    generate_dataset(root, categories=["synth_disc"], size=64, seed=0)
    return root


@pytest.mark.parametrize("category", ["synth_disc"])
def test_ci_preset_beats_both_floors(data, category):
    config = preset("ci")
    train, test = list_samples(data, category, "train"), list_samples(data, category, "test")
    train_images = load_images([s.path for s in train], config.image_size)
    test_images = load_images([s.path for s in test], config.image_size)
    labels, defects = [s.label for s in test], [s.defect_type for s in test]

    pixel = image_metrics(labels, pixel_statistics_scores(train_images, test_images).tolist(), defects).image_auroc
    untrained = evaluate_detector(untrained_detector(config, train_images), test).metrics.image_auroc
    result = train_model(config, train_images, device="cpu", progress=False)
    trained = evaluate_detector(fit_detector(result.model, train_images, config), test).metrics.image_auroc

    print(f"{category}: trained {trained:.3f}, untrained {untrained:.3f}, pixel statistics {pixel:.3f}")
    assert trained >= 0.9
    assert trained >= pixel + 0.15
    assert trained > untrained
