"""The CLI end to end on tiny data: happy paths and every bad input the library issue lists."""

import itertools
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from cutpaste.cli import main
from cutpaste.detector import BUNDLE_NAME, SUMMARY_NAME, Detector
from cutpaste.integrity import file_digests

FAST = ["--preset", "ci", "--steps", "4", "--size", "32", "--batch-size", "4", "--no-progress", "--device", "cpu"]


def _train(data, out, *extra):
    return main(["train", "--data", str(data), "--category", "widget", "--out", str(out), *FAST, *extra])


@pytest.fixture
def trained(tiny_root, tmp_path):
    out = tmp_path / "model"
    assert _train(tiny_root, out) == 0
    return out


def test_train_evaluate_predict(trained, tiny_root, tmp_path, capsys):
    assert (trained / BUNDLE_NAME).exists() and (trained / "train_log.jsonl").exists()
    report_path = tmp_path / "report.json"
    assert main(["evaluate", "--model", str(trained), "--data", str(tiny_root), "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    for key in ("image_auroc", "aupr", "f1_max", "threshold", "per_defect_auroc"):
        assert key in report
    assert set(report["per_defect_auroc"]) == {"crack"} and len(report["samples"]) == 6
    images = sorted(str(p) for p in (tiny_root / "widget" / "test" / "crack").iterdir())
    capsys.readouterr()
    assert main(["predict", "--model", str(trained), "--json", *images]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in rows] == images
    # The CLI scores exactly as the library and the evaluation do.
    by_path = {s["path"]: s["score"] for s in report["samples"]}
    for row in rows:
        assert row["score"] == pytest.approx(by_path[row["path"]], rel=1e-9)
        assert row["anomalous"] == (row["score"] >= row["threshold"])
    assert main(["predict", "--model", str(trained), images[0]]) == 0
    assert "verdict" in capsys.readouterr().out


def test_config_command_applies_flags_and_set(capsys):
    assert main(["config", "--preset", "ci", "--steps", "9", "--set", "augment.area_ratio=0.05,0.1"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["steps"] == 9 and config["augment"]["area_ratio"] == [0.05, 0.1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "fastest"], "unknown preset 'fastest'"),
        (["--backbone", "vgg11"], "backbone: unknown 'vgg11'"),
        (["--set", "augment.area_ratio=0.3,0.1"], "area_ratio: min 0.3 is larger than max 0.1"),
        (["--set", "nonsense=1"], "unknown key 'nonsense'"),
    ],
)
def test_bad_config_is_one_line_and_exit_2(tiny_root, tmp_path, capsys, args, message):
    assert _train(tiny_root, tmp_path / "m", *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "m" / BUNDLE_NAME).exists()


def test_bad_data(tiny_root, tmp_path, capsys):
    assert _train(tmp_path / "nowhere", tmp_path / "m") == 2
    assert "data directory not found" in capsys.readouterr().err
    assert main(["train", "--data", str(tiny_root), "--category", "gadget", "--out", str(tmp_path / "m"), *FAST]) == 2
    assert "category 'gadget' not found" in capsys.readouterr().err
    good = tiny_root / "widget" / "train" / "good"
    (good / "002.png").write_bytes((good / "001.png").read_bytes()[:80])
    assert _train(tiny_root, tmp_path / "m") == 2
    assert "002.png" in capsys.readouterr().err
    for p in good.iterdir():
        p.unlink()
    assert _train(tiny_root, tmp_path / "m") == 2
    assert "no training images" in capsys.readouterr().err


def test_missing_mask_warns_but_evaluates(trained, tiny_root, capsys):
    (tiny_root / "widget" / "ground_truth" / "crack" / "000_mask.png").unlink()
    assert main(["evaluate", "--model", str(trained), "--data", str(tiny_root)]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "crack/000.png" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_dir(tiny_root, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert _train(tiny_root, locked / "m") == 2
    assert "not writable" in capsys.readouterr().err


def test_output_dir_that_is_a_file(tiny_root, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert _train(tiny_root, blocker / "m") == 2
    assert "not writable" in capsys.readouterr().err


def test_existing_detector_survives_a_failed_run(trained, tiny_root, capsys):
    before = (trained / BUNDLE_NAME).read_bytes()
    assert _train(tiny_root, trained) == 2
    assert "already holds a trained detector" in capsys.readouterr().err
    good = tiny_root / "widget" / "train" / "good"
    (good / "000.png").write_bytes(b"broken")
    assert _train(tiny_root, trained, "--overwrite", "--restart") == 2
    assert (trained / BUNDLE_NAME).read_bytes() == before


def _record_digest(directory) -> None:
    (directory / SUMMARY_NAME).write_text(json.dumps({"files": file_digests(directory, [BUNDLE_NAME])}))


def test_half_written_and_foreign_model_dirs(trained, tiny_root, tmp_path, capsys):
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoints").mkdir(parents=True)
    assert main(["evaluate", "--model", str(unfinished), "--data", str(tiny_root)]) == 2
    assert "unfinished training run" in capsys.readouterr().err
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / BUNDLE_NAME).write_bytes((trained / BUNDLE_NAME).read_bytes()[:1000])
    assert main(["evaluate", "--model", str(truncated), "--data", str(tiny_root)]) == 2
    assert f"records no SHA-256 for {BUNDLE_NAME}: refused" in capsys.readouterr().err, "no digest record: refused"
    _record_digest(truncated)  # the record vouches for the file: what is refused now is the file itself
    assert main(["evaluate", "--model", str(truncated), "--data", str(tiny_root)]) == 2
    assert "half written" in capsys.readouterr().err
    bundle = torch.load(trained / BUNDLE_NAME, weights_only=False)
    bundle["format"] = 99
    future = tmp_path / "future"
    future.mkdir()
    torch.save(bundle, future / BUNDLE_NAME)
    _record_digest(future)
    assert main(["evaluate", "--model", str(future), "--data", str(tiny_root)]) == 2
    assert "bundle format 99" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp_path / "none"), "--data", str(tiny_root)]) == 2
    assert "model directory not found" in capsys.readouterr().err


def test_predict_reports_unreadable_images_and_scores_the_rest(trained, tiny_root, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    good = next((tiny_root / "widget" / "test" / "good").iterdir())
    assert main(["predict", "--model", str(trained), str(good), str(bad)]) == 2
    captured = capsys.readouterr()
    assert "bad.png" in captured.out and "1 of 2 images could not be read" in captured.err


def test_bundle_loads_without_training_code_and_scores_any_size(trained, tiny_root):
    detector = Detector.load(trained)
    image = Image.open(next((tiny_root / "widget" / "test" / "good").iterdir()))
    x = torch.from_numpy(np.asarray(image)).permute(2, 0, 1)
    small = detector.score(x.unsqueeze(0))
    assert small.shape == (1,) and torch.isfinite(small).all()
    assert detector.config.image_size == 32


def test_train_says_which_image_score_auto_chose_and_why(tmp_path, capsys):
    from tests.conftest import write_tiny_category

    write_tiny_category(tmp_path / "data", train=12)
    out = tmp_path / "model"
    assert _train(tmp_path / "data", out, "--set", "image_score=auto", "--set", "local_grid=2") == 0
    printed = capsys.readouterr().out
    chosen = Detector.load(out).meta["image_score_selection"]["chosen"]
    assert f"image score {chosen}, chosen on validation from the training images (12 normal" in printed


def test_evaluate_reports_the_false_positive_rate_realised_on_test_normals(trained, tiny_root, tmp_path, capsys):
    """A threshold set between the test split's normal scores: ``test_fpr`` is exactly the share at or above
    it, set beside the calibration's expected rate and interval (``detector.json``'s ``meta.calibration``)."""
    from cutpaste.data.layout import list_samples
    from cutpaste.evaluation.evaluate import score_samples

    detector = Detector.load(trained)
    good = [s for s in list_samples(tiny_root, "widget", "test") if s.label == 0]
    normals = sorted(score_samples(detector, good).tolist(), reverse=True)
    assert len(good) == 3 and len(set(normals)) == 3
    between = [normals[0] + 1.0, *((a + b) / 2 for a, b in itertools.pairwise(normals)), normals[-1] - 1.0]
    calibration = detector.meta["calibration"]
    for k, threshold in enumerate(between):  # k of the 3 normal images at or above the threshold
        detector.threshold = threshold
        detector.save(tmp_path / f"k{k}")
        report_path = tmp_path / f"k{k}.json"
        args = ["evaluate", "--model", str(tmp_path / f"k{k}"), "--data", str(tiny_root), "--no-pixel"]
        assert main([*args, "--json", str(report_path)]) == 0
        report = json.loads(report_path.read_text())
        assert report["test_fpr"] == pytest.approx(k / 3) and report["test_fpr_normals"] == 3, k
        assert f"false-positive rate at the threshold {k / 3:.1%} of 3 good images (expected" in capsys.readouterr().out
        assert sum(s["anomalous"] for s in report["samples"] if s["label"] == 0) == k
        assert report["expected_fpr"] == calibration["expected_fpr"]
        assert (report["expected_fpr_low"], report["expected_fpr_high"]) == (
            calibration["fpr_low"],
            calibration["fpr_high"],
        )
