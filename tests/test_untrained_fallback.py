"""A detector never ships worse than its untrained twin on its own validation (untrained_fallback)."""

from __future__ import annotations

import pytest
import torch

from cutpaste.data import list_samples, load_images
from cutpaste.data.synth import generate_dataset
from cutpaste.detector import Detector
from cutpaste.model.network import build_model
from cutpaste.presets import preset
from cutpaste.workflow import no_worse_than_untrained, train_category


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("fallback") / "data"
    generate_dataset(root, categories=["synth_disc"], size=64, seed=0, train_count=12, test_good=2)
    config = preset("ci").override({"steps": 4, "checkpoint_every": 4, "log_every": 2, "untrained_fallback": True})
    out = tmp_path_factory.mktemp("model")
    run = train_category(config, root, "synth_disc", out, progress=False)
    images = load_images([s.path for s in list_samples(root, "synth_disc", "train")], config.image_size)
    return run, images, out


def test_the_choice_is_recorded_and_read_on_one_validation_set(trained):
    run, _, out = trained
    choice = run.detector.meta["encoder_choice"]
    twin_better = choice["untrained_val_auroc"] > choice["trained_val_auroc"]
    assert choice["shipped"] == ("untrained" if twin_better else "trained")
    assert choice["digest"] == run.detector.meta["validation"]["digest"]
    loaded = Detector.load(out)
    assert loaded.meta["encoder_choice"] == choice


def test_a_trained_encoder_that_validates_worse_gives_way_to_its_twin(trained):
    run, images, _ = trained
    detector = run.detector
    detector.meta["validation"] = {**detector.meta["validation"], "val_auroc": -1.0}  # training "hurt"
    shipped = no_worse_than_untrained(detector, images, category="synth_disc")
    assert shipped.meta["encoder_choice"]["shipped"] == "untrained"
    torch.manual_seed(detector.config.seed)
    initial = build_model(detector.config).state_dict()
    assert all(torch.equal(v, initial[k]) for k, v in shipped.model.state_dict().items()), "the run's initial weights"
    assert shipped.meta["steps"] == detector.meta["steps"], "the training record stays with the bundle"
    assert shipped.meta["validation"]["digest"] == detector.meta["validation"]["digest"]


def test_a_trained_encoder_that_validates_better_ships(trained):
    run, images, _ = trained
    detector = run.detector
    detector.meta["validation"] = {**detector.meta["validation"], "val_auroc": 2.0}
    assert no_worse_than_untrained(detector, images, category="synth_disc") is detector
    assert detector.meta["encoder_choice"]["shipped"] == "trained"


def test_the_paper_preset_is_the_papers():
    assert not preset("paper").untrained_fallback
    assert preset("short").untrained_fallback and preset("demo").untrained_fallback
