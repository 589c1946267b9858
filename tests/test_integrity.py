"""Model files are data: a planted pickle payload never runs (its marker file is never created) and the
error names the file; a one-byte change is refused; bundles from before digests still load, with a warning."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cutpaste.data.images import load_images
from cutpaste.data.layout import list_samples
from cutpaste.data.synth import generate_dataset
from cutpaste.detector import BUNDLE_NAME, SUMMARY_NAME, Detector, embed_images
from cutpaste.ensemble import ENSEMBLE_MANIFEST, build_ensemble, bundle_digest, load_detector
from cutpaste.errors import ModelBundleError
from cutpaste.integrity import load_weights, sha256_file
from cutpaste.model.network import build_model
from cutpaste.presets import preset
from cutpaste.scoring.gaussian import GaussianDensity
from cutpaste.train.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_NAME, load_checkpoint

CATEGORY = "synth_disc"


class Payload:
    """Unpickling this creates ``marker``: what an attacker's replaced model file would do, harmlessly."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def plant(path: Path, marker: Path) -> None:
    """Replaces a torch file with one that keeps its keys but carries the payload."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state["meta" if "meta" in state else "history"] = Payload(marker)
    torch.save(state, path)


def rerecord(summary: Path, name: str, target: Path) -> None:
    """The attacker also rewrites the digest record next to the file: only loading as data stops them."""
    record = json.loads(summary.read_text())
    record["files"][name] = sha256_file(target)
    summary.write_text(json.dumps(record))


@pytest.fixture(scope="module")
def train_images(tmp_path_factory) -> torch.Tensor:
    root = tmp_path_factory.mktemp("trust") / "data"
    generate_dataset(root, categories=[CATEGORY], size=32, seed=3, train_count=8, test_good=2, test_defect_per_type=1)
    return load_images([s.path for s in list_samples(root, CATEGORY, "train")], 32)


def _detector(seed: int, images: torch.Tensor) -> Detector:
    config = preset("ci").override({"seed": seed, "image_size": 32})
    torch.manual_seed(seed)
    model = build_model(config).eval()
    density = GaussianDensity.fit(embed_images(model, images, batch_size=8, size=32))
    return Detector(model=model, density=density, threshold=1.0, config=config, category=CATEGORY)


@pytest.fixture
def saved(tmp_path, train_images) -> Path:
    _detector(0, train_images).save(tmp_path / "model")
    return tmp_path / "model"


def test_a_saved_bundle_records_its_digest_and_loads(saved):
    record = json.loads((saved / SUMMARY_NAME).read_text())["files"]
    assert record == {BUNDLE_NAME: sha256_file(saved / BUNDLE_NAME)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a recorded bundle loads without any warning
        Detector.load(saved)
    Detector.load(saved, expected_sha256=bundle_digest(saved))


def test_a_payload_in_a_bundle_never_runs(saved, tmp_path):
    marker = tmp_path / "pwned"
    plant(saved / BUNDLE_NAME, marker)
    rerecord(saved / SUMMARY_NAME, BUNDLE_NAME, saved / BUNDLE_NAME)
    with pytest.raises(ModelBundleError, match=rf"bundle {saved / BUNDLE_NAME} asks for \S+ .*could run code: refused"):
        Detector.load(saved)
    assert not marker.exists()


def test_a_one_byte_change_is_refused_by_name(saved):
    data = bytearray((saved / BUNDLE_NAME).read_bytes())
    data[len(data) // 2] ^= 1
    (saved / BUNDLE_NAME).write_bytes(bytes(data))
    with pytest.raises(ModelBundleError, match=rf"{saved / BUNDLE_NAME} changed after it was written"):
        Detector.load(saved)


def test_a_pinned_digest_refuses_another_valid_bundle(saved, tmp_path, train_images):
    other = tmp_path / "other"
    _detector(1, train_images).save(other)
    pinned = bundle_digest(saved)
    shutil.copy(other / BUNDLE_NAME, saved / BUNDLE_NAME)
    shutil.copy(other / SUMMARY_NAME, saved / SUMMARY_NAME)  # consistent with itself, not with the pin
    with pytest.raises(ModelBundleError, match=r"does not match.*pinned"):
        load_detector(saved, expected_sha256=pinned)


def test_a_record_may_not_point_outside_the_bundle(saved):
    record = json.loads((saved / SUMMARY_NAME).read_text())
    record["files"]["../../etc/passwd"] = "0" * 64
    (saved / SUMMARY_NAME).write_text(json.dumps(record))
    with pytest.raises(ModelBundleError, match="outside"):
        Detector.load(saved)


def test_a_bundle_without_its_digest_record_is_refused_unless_the_caller_pins_one(saved):
    record = json.loads((saved / SUMMARY_NAME).read_text())
    del record["files"]
    (saved / SUMMARY_NAME).write_text(json.dumps(record))
    with pytest.raises(ModelBundleError, match=f"records no SHA-256 for {BUNDLE_NAME}: refused"):
        Detector.load(saved)
    assert Detector.load(saved, expected_sha256=sha256_file(saved / BUNDLE_NAME)).category == CATEGORY


def test_a_payload_in_an_ensemble_member_never_runs(tmp_path, train_images):
    ensemble = build_ensemble([_detector(s, train_images) for s in range(2)], train_images)
    directory = tmp_path / "ens"
    ensemble.save(directory)
    load_detector(directory, expected_sha256=bundle_digest(directory))
    marker = tmp_path / "pwned"
    member = directory / "member-01" / BUNDLE_NAME
    plant(member, marker)
    with pytest.raises(ModelBundleError, match=rf"{member} changed after it was written"):
        load_detector(directory)
    rerecord(directory / "member-01" / SUMMARY_NAME, BUNDLE_NAME, member)
    rerecord(directory / ENSEMBLE_MANIFEST, f"member-01/{BUNDLE_NAME}", member)
    with pytest.raises(ModelBundleError, match=rf"{member}.*could run code"):
        load_detector(directory)
    assert not marker.exists()


def test_load_weights_names_a_file_that_is_not_torch_data(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a torch file")
    with pytest.raises(ModelBundleError, match=rf"checkpoint {path} is unreadable"):
        load_weights(path, kind="checkpoint")


def test_a_payload_in_a_training_checkpoint_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / CHECKPOINT_NAME
    torch.save({"format": CHECKPOINT_FORMAT, "step": 3, "history": Payload(marker)}, path)
    with pytest.raises(ModelBundleError, match=rf"checkpoint {path} asks for \S+ .*could run code: refused"):
        load_checkpoint(path)
    assert not marker.exists()


def test_cli_verify_prints_the_digest_and_predict_pins_one(saved, tmp_path, capsys):
    from cutpaste.cli import main

    assert main(["verify", str(saved)]) == 0
    assert sha256_file(saved / BUNDLE_NAME) in capsys.readouterr().out
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    assert main(["predict", "--model", str(saved), "--sha256", bundle_digest(saved), str(image)]) == 0
    capsys.readouterr()
    assert main(["predict", "--model", str(saved), "--sha256", "0" * 64, str(image)]) == 2
    assert "does not match" in capsys.readouterr().err
    assert main(["verify", str(saved), "--sha256", "0" * 64]) == 2
