"""A sweep that cannot choose anything useful fails before Ray starts or any trial runs, naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray
from PIL import Image

from cutpaste.data.synth import generate_dataset
from pipelines.search_space import SearchSpace, SearchSpaceError, trial_overrides
from pipelines.tune_sweep import main


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep-bad") / "data"
    generate_dataset(
        root, categories=["synth_disc"], size=32, seed=1, train_count=6, test_good=1, test_defect_per_type=1
    )
    return root


def _space(tmp_path: Path, content: dict) -> str:
    path = tmp_path / "space.json"
    path.write_text(json.dumps(content))
    return str(path)


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"learning_rate": [0.1, 0.01]}, "learning_rate: min 0.1 is larger than max 0.01"),
        ({"area_ratio_max": [0.2, 1.5]}, "area_ratio_max: augment.area_ratio: must lie inside (0, 1)"),
        ({"area_ratio_min": [-0.1, 0.02]}, "area_ratio_min: augment.area_ratio: values must be positive"),
        ({"area_ratio_min": [0.01, 0.2], "area_ratio_max": [0.1, 0.3]}, "area_ratio_min: its max 0.2 exceeds"),
        ({"scar_width_min": [9, 8]}, "scar_width_min: min 9.0 is larger than max 8.0"),
        ({"variant": ["5way"]}, "variant: unknown '5way'"),
        ({"ensemble_rule": ["median"]}, "ensemble_rule: unknown 'median'"),
        ({"feature_density": ["nearest"]}, "feature_density: unknown 'nearest'"),
        ({"image_score": ["patch"]}, "image_score: unknown 'patch'"),
        ({"feature_score": ["mean"]}, "feature_score: unknown 'mean'"),
        ({"feature_stages": [0, 2]}, "feature_stages: stack 1..local_stage (3) stages, got 0"),
        ({"ensemble_size": [0]}, "ensemble_size: values must be integers >= 1"),
        ({"patch_jitter": [0.1, 0.9]}, "patch_jitter: augment.patch_jitter: must lie in [0, 0.5], got 0.9"),
        ({"pre_jitter": [0.0, 0.9]}, "pre_jitter: augment.pre_jitter: must lie in [0, 0.5], got 0.9"),
        ({"pre_jitter": ["none"]}, "pre_jitter: augment.pre_jitter: cannot use 'none'"),
        ({"map_sigma": [2, -1]}, "search space: map_sigma: must be >= 0 px, got -1.0"),
        ({"lerning_rate": [0.1, 0.2]}, "unknown key 'lerning_rate'"),
    ],
)
def test_invalid_search_space(data, tmp_path, capsys, space, message):
    code = main(["--data", str(data), "--space", _space(tmp_path, space), "--out", str(tmp_path / "o")])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not ray.is_initialized()


def test_unknown_metric_zero_trials_and_a_validation_folder_without_anomalies(data, tmp_path, capsys):
    base = ["--data", str(data), "--out", str(tmp_path / "o")]
    assert main([*base, "--metric", "test_auroc"]) == 2
    assert "--metric 'test_auroc': no trial reports it" in capsys.readouterr().err
    assert main([*base, "--num-samples", "0"]) == 2
    assert "--num-samples must be >= 1" in capsys.readouterr().err
    folder = tmp_path / "val" / "good"
    folder.mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(folder / "a.png")
    assert main([*base, "--validation-folder", str(tmp_path / "val")]) == 2
    assert f"validation folder {tmp_path / 'val'} has no anomalies" in capsys.readouterr().err
    assert main([*base, "--categories", "synth_none"]) == 2
    assert "synth_none not under" in capsys.readouterr().err
    assert main([*base, "--set", "steps=0"]) == 2
    assert "steps: must be >= 1" in capsys.readouterr().err
    assert not ray.is_initialized()


def test_the_default_spaces_are_valid():
    SearchSpace().validate()
    # Any config field is searchable by its key; its values are checked by the config.
    space = SearchSpace.from_dict({"map_sigma": [2, 4], "augment.scar_rotation": 30})
    assert space.extra == {"map_sigma": (2, 4), "augment.scar_rotation": (30,)}
    point = trial_overrides(
        {"map_sigma": 4, "augment.scar_rotation": 30, "area_ratio_min": 0.01, "area_ratio_max": 0.1}
    )
    assert point.overrides == {"map_sigma": 4, "augment.scar_rotation": 30, "augment.area_ratio": [0.01, 0.1]}
    with pytest.raises(SearchSpaceError, match="aspect_ratio_min"):
        SearchSpace.from_dict({"aspect_ratio_min": [0.5, 1.5], "aspect_ratio_max": [2.0, 3.0]})


def test_a_search_space_file_that_is_not_a_json_object_names_the_file(tmp_path):
    from pipelines.search_space import load_space

    path = tmp_path / "space.json"
    for content, reason in (("{not json", "is not valid JSON"), ("[1, 2]", "expected a JSON object")):
        path.write_text(content)
        with pytest.raises(SearchSpaceError, match=reason):
            load_space(path)
    with pytest.raises(SearchSpaceError, match=r"search space file not found: .*missing\.json"):
        load_space(tmp_path / "missing.json")
    path.write_text(json.dumps({"learning_rate": [0.01, 0.1]}))
    lr = load_space(path).learning_rate
    assert (lr.low, lr.high) == (0.01, 0.1)
