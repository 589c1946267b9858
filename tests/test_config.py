import json

import numpy as np
import pytest

from cutpaste.config import PARTS, TrainConfig, config_part, field_parts, flatten
from cutpaste.errors import ConfigError
from cutpaste.presets import PRESETS, load_config, preset


def test_paper_preset_matches_the_paper():
    config = preset("paper")
    assert config.steps == 256 * 256
    assert config.batch_size * config.num_classes == 96
    assert (config.learning_rate, config.momentum, config.weight_decay) == (0.03, 0.9, 3e-5)
    assert config.image_size == 256 and config.backbone == "resnet18" and config.pretrained is None
    assert config.augment.area_ratio == (0.02, 0.15)
    assert config.augment.scar_width == (2.0, 16.0) and config.augment.scar_length == (10.0, 25.0)


def test_paper_preset_localizes_as_the_paper():
    """As we read the paper: 32 px patches at stride 4 (57 x 57 at 256 px), one Gaussian over all patch
    embeddings, a Gaussian of sigma 4 px over each receptive field, image score the raw grid's maximum."""
    config = preset("paper").override({"patch_size": 32})
    assert (config.patch_size, config.patch_stride, config.image_size) == (32, 4, 256)
    assert config.local_density == "shared" and config.map_sigma == 4.0 and config.patch_score == "grid_max"
    assert config.image_score == "global" and config.variant == "3way"


def test_a_bad_option_is_one_line_naming_the_field():
    with pytest.raises(ConfigError) as info:
        preset("short").override({"image_score": "lion"})
    assert "\n" not in str(info.value) and str(info.value).startswith("image_score:")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_validate_and_round_trip(name):
    config = preset(name).validate()
    assert TrainConfig.from_dict(json.loads(config.to_json())) == config


def test_override_accepts_dotted_and_nested_keys():
    config = preset("ci").override({"augment.area_ratio": [0.05, 0.1], "steps": "12"})
    assert config.augment.area_ratio == (0.05, 0.1) and config.steps == 12
    # Whole numbers written as floats (YAML's 1e3, a JSON 2.0) and 0/1 for a switch are what they say.
    parsed = preset("ci").override({"steps": "1e3", "batch_size": 8.0, "amp": 1, "untrained_fallback": "no"})
    assert (parsed.steps, parsed.batch_size, parsed.amp, parsed.untrained_fallback) == (1000, 8, True, False)
    assert isinstance(parsed.steps, int) and isinstance(parsed.batch_size, int)
    # NumPy scalars, as a Tune sampler returns them, are plain values in the config.
    sampled = preset("ci").override({"amp": np.bool_(False), "steps": np.int64(7), "learning_rate": np.float32(0.5)})
    assert (sampled.amp, sampled.steps, sampled.learning_rate) == (False, 7, 0.5)
    assert type(sampled.amp) is bool and type(sampled.steps) is int and type(sampled.learning_rate) is float
    again = preset("ci").override({"augment": {"scar_rotation": 10}})
    assert again.augment.scar_rotation == 10.0


@pytest.mark.parametrize(
    ("changes", "names"),
    [
        ({"stepz": 3}, "stepz"),
        ({"augment.area": [0.1, 0.2]}, "area"),
        ({"variant": "5way"}, "variant"),
        ({"optimizer": "adamw"}, "optimizer"),
        ({"warmup_steps": 10}, "warmup_steps"),
        ({"embedding": "multiscale"}, "embedding"),
        ({"image_score": "max"}, "image_score"),
        ({"image_score": "local", "patch_size": 32}, "image_score"),
        ({"local_stage": 5}, "local_stage"),
        ({"feature_stages": 0}, "feature_stages"),
        ({"local_stage": 2, "feature_stages": 3}, "feature_stages"),
        ({"feature_stages": "two"}, "feature_stages"),
        ({"feature_density": "here"}, "feature_density"),
        ({"feature_score": "mean"}, "feature_score"),
        ({"untrained_fallback": "perhaps"}, "untrained_fallback"),
        ({"patch_score": "mean"}, "patch_score"),
        ({"map_sigma": -1}, "map_sigma"),
        ({"augment.blend_opacity": [0.5, 1.0]}, "blend_opacity"),
        ({"variant": "4way"}, "variant"),
        ({"backbone": "vgg"}, "backbone"),
        ({"augment.area_ratio": [0.2, 0.1]}, "area_ratio"),
        ({"augment.area_ratio": [0.1, 1.5]}, "area_ratio"),
        ({"steps": 0}, "steps"),
        ({"steps": "many"}, "steps"),
        ({"amp": "perhaps"}, "amp"),
        # A number of the wrong kind is refused, not converted: True is no stage count (bool is an int in
        # Python), 2.5 steps are not 2, and 5 is not a yes or no.
        ({"feature_stages": True}, "feature_stages: cannot use True"),
        ({"steps": 2.5}, "steps: cannot use 2.5 .expected a whole number"),
        ({"steps": "2.5"}, "steps: cannot use '2.5'"),
        ({"learning_rate": False}, "learning_rate: cannot use False"),
        ({"untrained_fallback": 5}, "untrained_fallback: cannot use 5 .expected true or false"),
    ],
)
def test_invalid_values_name_the_key(changes, names):
    with pytest.raises(ConfigError, match=names):
        preset("ci").override(changes)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'fast'"):
        preset("fast")


def test_config_file_is_a_difference_from_a_preset(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"preset": "ci", "steps": 7, "augment": {"pre_jitter": 0.2}}))
    config = load_config(path)
    assert config.preset == "ci" and config.steps == 7 and config.augment.pre_jitter == 0.2
    assert config.image_size == preset("ci").image_size
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=str(path)):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.json")


def test_flatten_has_dotted_keys():
    flat = flatten(preset("paper"))
    assert flat["augment.area_ratio"] == (0.02, 0.15)
    assert flat["steps"] == 65536


def test_image_score_auto_falls_back_to_the_category_group_with_few_images():
    import torch

    from cutpaste.scoring.baselines import untrained_detector
    from cutpaste.scoring.choice import Scoring
    from cutpaste.scoring.selection import MIN_IMAGES, prior_choice

    short = preset("short")
    assert short.image_score == "auto"
    assert prior_choice(short, "transistor") == "local"
    assert prior_choice(short, "carpet") == "global" and prior_choice(short, "synth_disc") == "global"
    assert prior_choice(short.override({"patch_size": 32}), "bottle") == "global"
    assert MIN_IMAGES > 8
    images = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    small = short.override({"image_size": 64, "local_grid": 4})
    bottle = untrained_detector(small, images, category="bottle")
    assert bottle.scoring == Scoring("local", "auto", "max", chosen_by="lookup") and bottle.grid is not None
    assert bottle.config.image_score == "auto", "the config stays as asked"
    carpet = untrained_detector(small, images, category="carpet")
    assert carpet.scoring.image_score == "global" and carpet.grid is None
    assert "image_score_selection" not in carpet.meta


def test_the_config_is_in_three_parts_and_training_is_the_key():
    """Every field is in exactly one part; scoring and execution changes leave the training key alone,
    a training change (augmentation included) does not; a saved key this version lacks counts as training."""
    config = preset("ci")
    parts = {name: config_part(config, name) for name in PARTS}
    assert sum(len(p) for p in parts.values()) == len(flatten(config)) == len(field_parts())
    assert {**parts["training"], **parts["scoring"], **parts["execution"]} == flatten(config)
    assert "steps" in parts["training"] and "augment.pre_jitter" in parts["training"]
    assert "image_score" in parts["scoring"] and "checkpoint_every" in parts["execution"]
    key = parts["training"]
    for change in ({"image_score": "local"}, {"target_fpr": 0.05}, {"log_every": 3}, {"preset": "x"}):
        assert config_part(config.override(change), "training") == key, change
    for change in ({"steps": 7}, {"augment.pre_jitter": 0.0}, {"seed": 4}):
        assert config_part(config.override(change), "training") != key, change
    saved = {**config.to_dict(), "feature_centring": True}
    assert config_part(saved, "training") == {**key, "feature_centring": True}
    with pytest.raises(ConfigError, match="config part: unknown 'weights'"):
        config_part(config, "weights")
