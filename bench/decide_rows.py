"""What bench/decide.py measures and decides: its rows (each a config change and whether it trains),
the decisions that pair them, and the verdicts read from the recorded runs under the written rule."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from decision_rule import decide, list_verdict

from cutpaste.config import TrainConfig
from cutpaste.presets import preset
from cutpaste.scoring import selection as scorer_selection

PATCH: dict[str, Any] = {"patch_size": 32, "image_size": 128, "patch_stride": 8}
# Choices between one of ours and the paper's (or the default's) value: (decision, row, config key, ours,
# the other, what it decides). The row holds the value the preset does not, so each decision compares the
# preset with the alternative whichever side the preset took (demo stacks layer1 onto layer2, short keeps
# layer3 alone: the same row name measures each against its other choice).
BINARY = (
    ("feature_stages=2", "other-stages", "feature_stages", 2, 1, "the stage below stacked onto the map vs one stage"),
    ("local_stage=2", "other-local-stage", "local_stage", 2, 3, "feature maps ending at layer2 vs at layer3"),
    ("pre_jitter=0", "other-jitter", "augment.pre_jitter", 0.0, 0.1, "no whole-image colour jitter vs the paper's 0.1"),
)
# Each row: config changes from the preset, and whether it trains (False: random weights, same scoring).
ROWS: dict[str, tuple[dict[str, Any], bool]] = {
    "preset": ({}, True),
    "untrained": ({}, False),
    "global": ({"image_score": "global"}, True),
    **{row: ({}, True) for _, row, *_ in BINARY},  # the value the preset does not hold (binary_change)
    # image_score=auto with one candidate left out of its list (scoring only). Asked for as the one row
    # "without-chosen": per (category, seed) only the candidate the preset row chose is left out and scored;
    # leaving out any other changes no image score (the same one still ranks first), so those rows are
    # recorded as copies of the preset row (``"same_as": "preset"``) instead of being scored again.
    **{f"without-{c.name}": ({}, True) for c in scorer_selection.CANDIDATES},
    # The patch model (the README's example: 32 px patches at 128 px, stride 8), one training, scored with
    # the paper's shared Gaussian and sigma 4 px at 256 px, and with each alternative of ours.
    "patch": (PATCH, True),
    "patch-per-location": ({**PATCH, "local_density": "per_location"}, True),
    "patch-knn": ({**PATCH, "local_density": "knn"}, True),
    "patch-sigma0": ({**PATCH, "map_sigma": 0.0}, True),
}
# The training recipe, revisited until training beats its untrained twin on every category: each row
# trains the preset with one change (relative to the preset: a preset that adopts one is retired, since its
# runs measured the old recipe) and is scored as the preset is. Not in --rows' default (one training each).
RECIPES: dict[str, tuple[Callable[[TrainConfig], dict[str, Any]], str]] = {
    "half-steps": (lambda c: {"steps": c.steps // 2}, "half the steps (less drift from the random features)"),
    "double-steps": (lambda c: {"steps": c.steps * 2}, "twice the steps (beyond the preset's time budget)"),
    "double-steps-half-batch": (
        lambda c: {"steps": c.steps * 2, "batch_size": c.batch_size // 2},
        "twice the steps at half the batch (the preset's images and time budget)",
    ),
    "third-lr": (lambda c: {"learning_rate": c.learning_rate / 3}, "a third of the learning rate"),
    "cutpaste-only": (lambda c: {"variant": "normal"}, "the CutPaste view alone (2-way, no scar)"),
}
ROWS.update({name: ({}, True) for name in RECIPES})
# The trained detector and its untrained twin as one: each member's score standardised by its out-of-fold
# training scores and the two averaged (cutpaste.ensemble, rule "mean"); scoring only, on the preset's
# training. The other way of never shipping worse than the twin, besides falling back to it.
TWIN_MEAN = "twin-mean"
ROWS[TWIN_MEAN] = ({}, True)
WITHOUT_CHOSEN = "without-chosen"
# (name, option, baseline, what it decides): the option is the preset's choice where the preset makes one
# the paper does not (or the incumbent, where two non-paper choices compete).
DECISIONS = (
    ("training", "preset", "untrained", "the trained encoder against the same scoring on random weights"),
    ("image_score=auto", "preset", "global", "the detector chooses its image score vs the paper's global Gaussian"),
)
# Each of auto's candidates against the list without it, under the list rule (decision_rule.list_verdict):
# "adopt" keeps it in the list, "keep" removes it.
CANDIDATE_DECISIONS = tuple(
    (
        f"auto list: {c.name}",
        "preset",
        f"without-{c.name}",
        f"{c.name} in image_score=auto's list vs the list without it",
    )
    for c in scorer_selection.CANDIDATES
)
# The patch model localizes: its decisions read pixel AUROC on the validation anomalies' masks.
PATCH_DECISIONS = (
    (
        "patch: local_density=per_location",
        "patch-per-location",
        "patch",
        "one Gaussian per grid position vs the paper's shared one",
    ),
    (
        "patch: local_density=knn",
        "patch-knn",
        "patch",
        "a k-NN memory bank of patch features vs the paper's shared Gaussian",
    ),
    ("patch: map_sigma=0", "patch-sigma0", "patch", "smoothing by a quarter patch vs the paper's sigma 4 px at 256 px"),
    # Where both alternatives beat the shared Gaussian, the simpler one (no memory bank) stays unless the
    # bank beats it too: read by patch_density.
    ("patch: knn over per_location", "patch-knn", "patch-per-location", "the k-NN bank vs one Gaussian per position"),
)


# Per recipe (and for the trained detector combined with its twin): against the preset (what would change
# the default), and against the untrained twin, per category too (what the recipe is revisited for). Every
# decision against the twin is made per category as well.
RECIPE_DECISIONS = (
    *(
        d
        for name, (_, what) in RECIPES.items()
        for d in (
            (f"recipe: {name}", name, "preset", f"{what} vs the preset's recipe"),
            (f"training at {name}", name, "untrained", f"the encoder trained with {what} vs the untrained twin"),
        )
    ),
    ("twin: combined", TWIN_MEAN, "preset", "the trained detector and its twin averaged vs the trained one alone"),
    (f"training at {TWIN_MEAN}", TWIN_MEAN, "untrained", "the trained detector and its twin averaged vs the twin"),
)


def patch_density(verdicts: dict[str, str]) -> str:
    """The patch model's ``local_density`` the patch decisions' verdicts (name -> verdict) choose."""
    knn = verdicts.get("patch: local_density=knn") == "adopt"
    per_location = verdicts.get("patch: local_density=per_location") == "adopt"
    if knn and (not per_location or verdicts.get("patch: knn over per_location") == "adopt"):
        return "knn"
    return "per_location" if per_location else "shared"


PIXEL_METRICS = ("val_pixel_auroc", "pixel_auroc")
PIXEL_ROWS = (
    "preset",
    "untrained",
    *(r for r in ROWS if r.startswith("patch")),
)  # pixel metrics on test cost time: the floors and the shipped row only


def row_config(name: str, preset_name: str, seed: int) -> TrainConfig:
    changes, _ = ROWS[name]
    if binary := next((b for b in BINARY if b[1] == name), None):
        changes = binary_change(binary, preset(preset_name))
    elif name in RECIPES:
        changes = RECIPES[name][0](preset(preset_name))
    return preset(preset_name).override({"seed": seed, **changes})


def _holds_ours(binary: tuple[str, str, str, Any, Any, str], config: TrainConfig) -> bool:
    _, _, key, ours, _, _ = binary
    section, _, field = key.rpartition(".")
    return getattr(getattr(config, section) if section else config, field) == ours


def binary_change(binary: tuple[str, str, str, Any, Any, str], config: TrainConfig) -> dict[str, Any]:
    """The change to ``config`` that gives its row the value the preset does not hold."""
    _, _, key, ours, other, _ = binary
    return {key: other if _holds_ours(binary, config) else ours}


def binary_decisions(preset_name: str) -> tuple[tuple[str, str, str, str], ...]:
    """Each of :data:`BINARY` as (name, option, baseline, what): the option is whichever row holds ours."""
    config, out = preset(preset_name), []
    for b in BINARY:
        name, row, *_, what = b
        out.append((name, "preset", row, what) if _holds_ours(b, config) else (name, row, "preset", what))
    return tuple(out)


def decisions(runs: list[dict[str, Any]], preset_name: str, categories: list[str]) -> list[dict[str, Any]]:
    """Every decision of the preset with rows to decide it, and the training decisions per category too
    (on the categories that have both rows)."""
    image = (*DECISIONS, *binary_decisions(preset_name), *CANDIDATE_DECISIONS, *RECIPE_DECISIONS)
    out = []
    for metrics, listed in ((("val_auroc", "image_auroc"), image), (PIXEL_METRICS, PATCH_DECISIONS)):
        val, test = _by_row(runs, preset_name, categories, *metrics)
        for name, option, baseline, what in listed:
            try:
                d = decide(option, baseline, val, test)
            except ValueError:
                continue
            if name.startswith("auto list: "):
                d.verdict = list_verdict(d)
            row = {"preset": preset_name, "decision": name, "what": what, "metric": metrics[0], "scope": "all"}
            out.append({**row, **d.to_dict()})
            if baseline == "untrained":
                for category in sorted(d.seeds):
                    one = decide(option, baseline, {category: val[category]}, {category: test.get(category, {})})
                    out.append({**row, "scope": category, **one.to_dict()})
    return out


def _by_row(
    runs: list[dict[str, Any]], preset_name: str, categories: list[str], val_key: str, test_key: str
) -> tuple[dict[str, dict[int, dict[str, float]]], dict[str, dict[int, dict[str, float]]]]:
    """``[category][seed][row]`` of one validation and one test metric (rows without the metric left out)."""
    val: dict[str, dict[int, dict[str, float]]] = {}
    test: dict[str, dict[int, dict[str, float]]] = {}
    for r in runs:
        if r["preset"] != preset_name or r["category"] not in categories:
            continue
        if r.get(val_key) is not None:
            val.setdefault(r["category"], {}).setdefault(r["seed"], {})[r["row"]] = r[val_key]
        if r.get(test_key) is not None:
            test.setdefault(r["category"], {}).setdefault(r["seed"], {})[r["row"]] = r[test_key]
    return val, test
