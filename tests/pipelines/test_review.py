"""The review experience without a cluster: descriptions, datasets, the status table and the warning filter."""

from __future__ import annotations

import io
import logging

import pandas as pd

from cutpaste.presets import preset
from cutpaste.storage.inventory import category_inventory
from pipelines import descriptions
from pipelines.console import KNOWN_HARMLESS, TableWriter, live_status_table, quiet_known_warnings, status_table
from pipelines.datasets import dataset_inputs
from pipelines.status import RunStatus


def _record(category: str, seed: int, **extra) -> dict:
    return {
        "category": category,
        "seed": seed,
        "status": "finished",
        "run_name": f"b-{category}-s{seed}",
        "mlflow_run_id": f"id-{category}-{seed}",
        "image_auroc": 0.9 + seed / 100,
        **extra,
    }


def test_the_parent_note_holds_the_table_the_champions_and_a_link_to_every_run():
    records = [_record("bottle", 0, registered_version="3", val_auroc=0.97), _record("bottle", 1)]
    records.append({"category": "bottle", "seed": 2, "status": "failed: worker died", "run_name": "b-bottle-s2"})
    note = descriptions.parent_note(
        benchmark_id="b",
        data="s3://bucket/mvtec",
        train_config=preset("demo"),
        seeds=3,
        results_markdown="| category | image AUROC |\n|---|---|\n| bottle | 90.5 ± 0.7 |",
        records=records,
        experiment_id="7",
        state="finished, 1 of 3 runs failed",
    )
    assert note.startswith("# CutPaste benchmark `b` (finished, 1 of 3 runs failed)")
    assert "`s3://bucket/mvtec`" in note and "| bottle | 90.5 ± 0.7 |" in note
    assert "`models:/cutpaste-bottle@champion` (version 3)" in note
    assert "(#/experiments/7/runs/id-bottle-0?workflowType=machine_learning)" in note
    assert "(#/experiments/7/runs/id-bottle-1?workflowType=machine_learning)" in note
    assert "| b-bottle-s2 | failed: worker died |" in note


def test_the_child_note_states_what_the_run_is_and_where_its_detector_lives():
    link = descriptions.run_link("7", "parent", "b")
    note = descriptions.child_note(
        category="bottle",
        seed=1,
        metrics={"image_auroc": 0.9512, "threshold": 40.5, "expected_fpr": 0.02, "pixel_auroc": None},
        registered=None,
        parent_link=link,
    )
    assert "# `bottle`, seed 1" in note and "[b](#/experiments/7/runs/parent?workflowType=machine_learning)" in note
    assert "| image AUROC (test) | 0.9512 |" in note and "| threshold (Mahalanobis distance) | 40.5000 |" in note
    assert "pixel AUROC" not in note and descriptions.UNREGISTERED in note


def test_a_changed_image_changes_the_logged_dataset_digest(tiny_root):
    before = dataset_inputs(str(tiny_root), "widget")
    rows = category_inventory(tiny_root, "widget")
    assert {(r["split"], r["defect_type"]) for r in rows} == {("train", "good"), ("test", "good"), ("test", "crack")}
    assert all(len(r["fingerprint"]) == 64 for r in rows)
    assert [r["mask"] is not None for r in rows] == [r["defect_type"] == "crack" for r in rows]
    (dataset, context, tags), _ = before
    assert context == "training" and tags["images"] == "6" and tags["defect_type.good"] == "6"
    assert isinstance(dataset.df, pd.DataFrame) and dataset.source.uri.endswith("widget/train")
    path = tiny_root / "widget" / "train" / "good" / "000.png"
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    after = dataset_inputs(str(tiny_root), "widget")
    assert after[0][0].digest != dataset.digest  # train changed
    assert after[1][0].digest == before[1][0].digest  # test did not


def test_the_status_table_shows_the_eta_from_the_run_s_own_step_rate():
    snapshot = {
        "run-a": RunStatus("training", step=60, steps=160, loss=0.5, img_s=42.0, training_since=100.0, first_step=10),
        "run-b": RunStatus("queued"),
    }
    header, first, second = status_table(snapshot, now=150.0)
    assert header.split() == ["run", "state", "step", "loss", "img/s", "ETA"]
    # 50 steps in 50 s, 100 to go: 1:40.
    assert first.split() == ["run-a", "training", "60/160", "0.500", "42.0", "1:40"]
    assert second.split() == ["run-b", "queued", "-", "-", "-", "-"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_table_redraws_in_place_on_a_terminal_only():
    snapshot = {"run-a": RunStatus("training", step=60, steps=160, loss=0.5)}
    terminal, log = _Terminal(), io.StringIO()
    writer = TableWriter(terminal)
    assert writer.live
    writer.draw(live_status_table(snapshot, now=0.0, title="first"))
    snapshot["run-a"] = RunStatus("evaluating", step=160, steps=160, loss=0.25)
    writer.draw(live_status_table(snapshot, now=0.0, title="second"))
    writer.forget()  # the last table stays on screen
    drawn = terminal.getvalue()
    assert "first" in drawn and "second" in drawn and "evaluating" in drawn and "0.250" in drawn
    assert "\x1b[2K" in drawn  # the second draw erased the first in place (rich's Live)
    assert TableWriter(log).live is False
    assert log.getvalue() == ""


def test_only_the_known_harmless_warning_is_filtered(caplog):
    quiet_known_warnings()
    quiet_known_warnings()  # idempotent: one filter per logger
    name, (fragment,) = next(iter(KNOWN_HARMLESS.items()))
    logger = logging.getLogger(name)
    assert len(logger.filters) == 1
    with caplog.at_level(logging.WARNING, logger=name):
        logger.warning(f"{fragment}. State API may be temporarily unavailable.")
        logger.warning("placement group removal failed")
    assert [r.getMessage() for r in caplog.records] == ["placement group removal failed"]


def test_the_system_sampler_reports_this_process():
    from pipelines.system_metrics import SystemSampler

    sampler = SystemSampler()
    sum(i * i for i in range(200_000))  # some CPU time between samples
    sample = sampler.sample()
    assert sample["system/cpu_percent"] >= 0 and sample["system/memory_rss_mb"] > 10
    assert "system/load_1m" in sample
