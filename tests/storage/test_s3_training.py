"""Train and evaluate from s3:// through the CLI: the same detector and AUROC as from the local copy."""

from __future__ import annotations

import json

from cutpaste.cli import main

FAST = ["--preset", "ci", "--steps", "3", "--size", "32", "--batch-size", "2", "--no-progress", "--device", "cpu"]


def test_train_and_evaluate_from_s3_match_the_local_copy(uploaded, synth_root, tmp_path, s3):
    category = sorted(p.name for p in synth_root.iterdir() if p.is_dir())[0]
    reports = {}
    for name, data in (("local", str(synth_root)), ("s3", uploaded)):
        model = tmp_path / f"model-{name}"
        args = ["--data", data, "--s3-endpoint", s3.endpoint]
        assert main(["train", *args, "--category", category, "--out", str(model), *FAST]) == 0
        report = tmp_path / f"{name}.json"
        assert main(["evaluate", "--model", str(model), *args, "--json", str(report), "--device", "cpu"]) == 0
        reports[name] = json.loads(report.read_text())
    assert reports["s3"]["image_auroc"] == reports["local"]["image_auroc"]
    assert [s["score"] for s in reports["s3"]["samples"]] == [s["score"] for s in reports["local"]["samples"]]
