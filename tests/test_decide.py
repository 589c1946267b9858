"""bench/decide.py and its rows (bench/decide_rows.py): the command line refuses bad input before any
training, the rows of auto's candidate list are scored only where leaving the candidate out can change a
score, and the decisions read the rows they name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import load_bench_module

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def decide():
    return load_bench_module("decide")


@pytest.fixture(scope="module")
def rows():
    return load_bench_module("decide_rows")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "decide.py"), *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--rows", "preset,bogus"], "--rows: unknown bogus"),
        (["--seeds", "0,x"], "--seeds '0,x'"),
        (["--categories", "mvtec_ad/nothing"], "--categories mvtec_ad/nothing"),
    ],
)
def test_bad_input_is_refused_naming_the_flag(tmp_path, args, names):
    (tmp_path / "mvtec_ad" / "bottle" / "train").mkdir(parents=True)
    base = {"--preset": "short", "--data": str(tmp_path), "--categories": "mvtec_ad/bottle", "--rows": "preset"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    out = tmp_path / "decisions.json"
    result = _run(*[x for kv in base.items() for x in kv], "--out", str(out))
    assert result.returncode == 2, result.stderr
    assert names in result.stderr
    assert not out.exists()


def test_new_training_is_not_paired_with_rows_trained_in_another_precision(tmp_path):
    """A row trained here in fp32 against a preset row trained in bf16 (or before the precision was kept)
    would measure the precision as much as the option: refused before any training, the file untouched."""
    (tmp_path / "mvtec_ad" / "bottle" / "train").mkdir(parents=True)
    out = tmp_path / "decisions.json"
    recorded = {"preset": "short", "category": "bottle", "seed": 0, "row": "preset", "train_s": 700.0}
    out.write_text(json.dumps({"min_seeds": 3, "runs": [recorded], "decisions": []}))
    before = out.read_text()
    args = ["--preset", "short", "--data", str(tmp_path), "--categories", "mvtec_ad/bottle", "--seeds", "0"]
    result = _run(*args, "--rows", "preset,other-jitter", "--out", str(out))
    assert result.returncode == 1, result.stderr
    assert "preset (unrecorded)" in result.stderr and "--redo" in result.stderr
    assert out.read_text() == before


def test_rows_pair_only_with_training_done_in_the_same_precision(decide):
    recorded = {
        "preset": {"row": "preset", "train_s": 1.0, "train_precision": "cpu/bf16"},
        "untrained": {"row": "untrained"},
    }
    assert decide.unpairable(recorded, ["other-jitter"], "cpu/bf16") == {}
    assert decide.unpairable(recorded, ["other-jitter"], "cpu/fp32") == {"preset": "cpu/bf16"}
    assert decide.unpairable(recorded, ["pixel-stats", "untrained"], "cpu/fp32") == {}  # nothing trains anew
    assert decide.training_precision(decide.preset("ci")) in ("cpu/fp32", "cuda/fp32")  # ci asks for no amp


def _preset_row(choice: str) -> dict:
    return {"preset": "short", "category": "c", "seed": 0, "row": "preset", "auto_choice": choice, "val_auroc": 0.8}


def test_leaving_out_a_candidate_that_was_not_chosen_copies_the_preset_row(decide, monkeypatch):
    scored = []
    monkeypatch.setattr(decide, "score_row", lambda name, *a: scored.append(name) or {"val_auroc": 0.7})
    monkeypatch.setattr(decide, "row_config", lambda *a: None)
    base = _preset_row("local")
    rows = {c.name: decide._without("short", Path("."), base, c.name) for c in decide.scorer_selection.CANDIDATES}
    assert scored == ["without-local"]
    assert rows["local"]["val_auroc"] == 0.7 and "same_as" not in rows["local"]
    assert rows["global"] == {**base, "row": "without-global", "same_as": "preset", "wall_s": 0.0}


def test_the_list_without_a_candidate_is_restored_after_the_row(decide):
    names = [c.name for c in decide.scorer_selection.CANDIDATES]
    with decide._candidates_without("without-knn-relative"):
        assert [c.name for c in decide.scorer_selection.CANDIDATES] == [n for n in names if n != "knn-relative"]
    assert [c.name for c in decide.scorer_selection.CANDIDATES] == names


def test_without_chosen_counts_as_recorded_only_when_every_candidate_row_is(decide):
    runs = [{**_preset_row("local"), "row": f"without-{c.name}"} for c in decide.scorer_selection.CANDIDATES]
    assert decide.WITHOUT_CHOSEN in decide.recorded_rows(runs, "short", "c", 0)
    assert decide.WITHOUT_CHOSEN not in decide.recorded_rows(runs[1:], "short", "c", 0)


def test_a_candidate_never_chosen_is_removed_from_the_list(rows):
    """Three seeds on two categories where ``local`` is always chosen and wins over the list without it:
    ``local`` stays; ``global`` was never chosen, its rows are copies, its gain is zero: the list drops it."""
    runs = []
    for category in ("a", "b"):
        for seed in range(3):
            base = {**_preset_row("local"), "category": category, "seed": seed, "val_auroc": 0.8 + 0.01 * seed}
            runs += [base, {**base, "row": "without-local", "val_auroc": base["val_auroc"] - 0.05}]
            runs += [{**base, "row": "without-global", "same_as": "preset"}]
    for r in runs:
        r["image_auroc"] = 0.5
    made = {d["decision"]: d for d in rows.decisions(runs, "short", ["a", "b"]) if d["scope"] == "all"}
    assert made["auto list: local"]["verdict"] == "adopt"
    assert made["auto list: global"]["verdict"] == "keep" and made["auto list: global"]["val_delta"] == 0


def test_patch_decisions_read_pixel_auroc_and_image_decisions_image_auroc(rows):
    """A patch row better at localizing (pixel validation) but worse at image level is adopted for the
    patch model; the image-level decisions never read pixel numbers."""
    runs = []
    for category in ("a", "b"):
        for seed in range(3):
            common = {"preset": "short", "category": category, "seed": seed, "image_auroc": 0.5, "pixel_auroc": 0.5}
            wobble = 0.01 * seed
            runs += [
                {**common, "row": "patch", "val_auroc": 0.9 + wobble, "val_pixel_auroc": 0.80 + wobble},
                {**common, "row": "patch-per-location", "val_auroc": 0.7 + wobble, "val_pixel_auroc": 0.90 + wobble},
                {**common, "row": "preset", "val_auroc": 0.7 + wobble, "val_pixel_auroc": 0.99},
                {**common, "row": "global", "val_auroc": 0.8 + wobble},
            ]
    made = {d["decision"]: d for d in rows.decisions(runs, "short", ["a", "b"]) if d["scope"] == "all"}
    per_location = made["patch: local_density=per_location"]
    assert per_location["verdict"] == "adopt" and per_location["metric"] == "val_pixel_auroc"
    assert per_location["val_delta"] == pytest.approx(0.10)
    assert made["image_score=auto"]["verdict"] == "keep" and made["image_score=auto"]["val_delta"] == pytest.approx(
        -0.1
    )
    assert "patch: local_density=knn" not in made  # no patch-knn rows: no decision, never a made-up one


def test_a_recipe_is_decided_against_the_preset_and_per_category_against_the_twin(rows):
    """A recipe measured on one category of two: undecided overall (every category needs its seeds), but
    decided against the twin on the category that has it; the preset's training decision is untouched."""
    runs = []
    for category in ("a", "b"):
        for seed in range(3):
            common = {"preset": "short", "category": category, "seed": seed, "image_auroc": 0.5}
            wobble = 0.01 * seed
            runs += [
                {**common, "row": "preset", "val_auroc": 0.80 + wobble},
                {**common, "row": "untrained", "val_auroc": 0.81 + wobble},
            ]
            if category == "a":
                runs.append({**common, "row": "half-steps", "val_auroc": 0.85 + wobble})
    made = {(d["decision"], d["scope"]): d for d in rows.decisions(runs, "short", ["a", "b"])}
    assert made[("recipe: half-steps", "all")]["verdict"].startswith("undecided")
    assert made[("training at half-steps", "all")]["verdict"].startswith("undecided")
    at_a = made[("training at half-steps", "a")]
    assert at_a["verdict"] == "adopt" and at_a["val_delta"] == pytest.approx(0.04)
    assert ("training at half-steps", "b") not in made
    assert made[("training", "a")]["verdict"] == "keep"
    config = rows.row_config("half-steps", "short", 1)
    assert (config.steps, config.seed) == (rows.preset("short").steps // 2, 1)
    assert rows.row_config("double-steps", "short", 0).steps == rows.preset("short").steps * 2
    same_images = rows.row_config("double-steps-half-batch", "short", 0)
    assert same_images.steps * same_images.batch_size == rows.preset("short").steps * rows.preset("short").batch_size
    assert rows.row_config("cutpaste-only", "short", 0).variant == "normal"


def test_decisions_no_longer_made_are_kept_as_recorded(decide, tmp_path):
    """A retired preset's decisions and a deleted option's stay in the file with their commit; a decision
    made again replaces its record."""
    old = [
        {"preset": "short-v1", "decision": "training", "scope": "all", "verdict": "keep", "commit": "a"},
        {"preset": "demo", "decision": "feature_centring", "scope": "all", "verdict": "keep", "commit": "a"},
        {"preset": "demo", "decision": "training", "scope": "all", "verdict": "keep", "commit": "a"},
    ]
    path = tmp_path / "decisions.json"
    path.write_text(json.dumps({"runs": [], "decisions": old}))
    made = [{"preset": "demo", "decision": "training", "scope": "all", "verdict": "adopt", "commit": "b"}]
    assert decide._frozen(path, made) == old[:2]
    assert decide._frozen(tmp_path / "none.json", made) == []


# What each decision's option is in a config: "adopt" means the preset holds it, "keep" that it does not.
HOLDS = {
    "image_score=auto": lambda c: c.image_score == "auto",
    "feature_stages=2": lambda c: c.feature_stages == 2,
    "local_stage=2": lambda c: c.local_stage == 2,
    "pre_jitter=0": lambda c: c.augment.pre_jitter == 0,
    "feature_centring": lambda c: getattr(c, "feature_centring", False),  # deleted after losing
    "patch: map_sigma=0": lambda c: c.map_sigma == 0,
    # Not in the product: an adoption fails here until the detector can ship the pair.
    "twin: combined": lambda c: getattr(c, "twin_combined", False),
}
# The patch density's decisions, read together (decide_rows.patch_density).
DENSITY = ("patch: local_density=per_location", "patch: local_density=knn", "patch: knn over per_location")


def test_the_presets_hold_every_verdict_in_force(decide, rows):
    """docs/decisions.md and the presets agree: each decided option is in its preset exactly when adopted
    (a verdict made on a retired version of a preset counts until today's preset has its own); auto's list
    holds the candidates that stayed; where training did not beat its twin the twin guard is on."""
    from decisions_doc import DECIDED_PRESETS, FINAL, in_force

    from cutpaste.presets import preset

    decisions = json.loads((ROOT / "bench" / "results" / "decisions.json").read_text())["decisions"]
    listed = {c.name for c in decide.scorer_selection.CANDIDATES}
    checked = 0
    for name in sorted({d["decision"] for d in decisions}):
        for preset_name in DECIDED_PRESETS:
            d = in_force(decisions, preset_name, name)
            if d is None or d["verdict"] not in FINAL or name in DENSITY:
                continue  # the density's decisions are read together below
            config, adopted = preset(preset_name), d["verdict"] == "adopt"
            if name == "training":
                assert adopted or config.untrained_fallback, (preset_name, name)
            elif name.startswith("training at "):
                continue  # a recipe against the twin: what the preset holds is its recipe decision
            elif name.startswith("recipe: "):
                # Adopting a recipe changes the preset and retires its runs (they measured the old recipe):
                # only a retired version's verdict can be an adoption.
                assert not adopted or d["preset"] != preset_name, (preset_name, name, "retire the preset's runs")
            elif name.startswith("auto list: "):
                assert (name.removeprefix("auto list: ") in listed) == adopted, (preset_name, name, d["preset"])
            else:
                assert HOLDS[name](config) == adopted, (preset_name, name, d["preset"])
            checked += 1
    for preset_name in DECIDED_PRESETS:
        verdicts = {}
        for name in DENSITY:
            d = in_force(decisions, preset_name, name)
            verdicts[name] = "" if d is None else d["verdict"]
        assert preset(preset_name).local_density == rows.patch_density(verdicts), preset_name
    assert checked >= 10


def test_the_patch_density_is_the_simpler_alternative_unless_the_bank_beats_it_too(rows):
    adopt = {"patch: local_density=per_location": "adopt", "patch: local_density=knn": "adopt"}
    assert rows.patch_density({}) == "shared"
    assert rows.patch_density({"patch: local_density=knn": "undecided: 1 paired seeds"}) == "shared"
    assert rows.patch_density(adopt) == "per_location"
    assert rows.patch_density({**adopt, "patch: knn over per_location": "adopt"}) == "knn"
    assert rows.patch_density({"patch: local_density=knn": "adopt"}) == "knn"


def test_a_binary_choice_compares_the_preset_with_the_value_it_does_not_hold(rows):
    """demo stacks layer1 onto layer2 and short keeps layer3 alone: the same rows measure each preset
    against its other choice, and the option is always the row that holds ours."""
    short = {name: (option, baseline) for name, option, baseline, _ in rows.binary_decisions("short")}
    demo = {name: (option, baseline) for name, option, baseline, _ in rows.binary_decisions("demo")}
    assert short["feature_stages=2"] == ("other-stages", "preset") and demo["feature_stages=2"] == (
        "preset",
        "other-stages",
    )
    assert short["pre_jitter=0"] == ("other-jitter", "preset") and demo["pre_jitter=0"] == ("other-jitter", "preset")
    assert [rows.row_config("other-stages", p, 0).feature_stages for p in ("short", "demo")] == [2, 1]
    assert [rows.row_config("other-local-stage", p, 0).local_stage for p in ("short", "demo")] == [2, 3]
    assert rows.row_config("other-jitter", "short", 3).augment.pre_jitter == 0.0


def test_the_combined_row_scores_the_trained_detector_and_its_twin_as_one(decide, tmp_path, monkeypatch):
    """twin-mean is the preset's trained detector and the untrained twin of the same seed, standardised
    and averaged: the ensemble it scores has exactly those two members."""
    from tests.conftest import write_tiny_category

    write_tiny_category(tmp_path, train=12, size=32)
    built = []
    real = decide.build_ensemble
    monkeypatch.setattr(
        decide, "build_ensemble", lambda members, *a, **k: built.append(members) or real(members, *a, **k)
    )
    config = decide.preset("ci").override({"steps": 2, "image_size": 32, "seed": 3})
    out = decide._score_row("twin-mean", config, tmp_path, "widget", 3)
    (members,) = built
    assert [bool(m.meta.get("untrained")) for m in members] == [False, True]
    assert {m.config.seed for m in members} == {3}
    assert out["validation_digest"] and "val_auroc" in out


def test_the_decisions_document_is_the_rendering_of_the_results_file():
    """docs/decisions.md is generated from bench/results/decisions.json: an edit to either alone fails."""
    from decisions_doc import render

    results = json.loads((ROOT / "bench" / "results" / "decisions.json").read_text())
    assert render(results) == (ROOT / "docs" / "decisions.md").read_text()
