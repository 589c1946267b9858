"""Named configs: the paper's protocol, the sized-down presets decided on validation, and the suite's.

A preset is a :class:`~cutpaste.config.TrainConfig` instance; a JSON config file or ``--set`` flags are
a short difference from one (:func:`load_config`, :func:`parse_overrides`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cutpaste.config import TrainConfig
from cutpaste.errors import ConfigError

PRESETS: dict[str, TrainConfig] = {
    # The paper's protocol (Appendix A): 256 "epochs" x 256 steps, 96 images per 3-way step.
    "paper": TrainConfig(),
    # Sized for a 2-core CPU: a category trains in about two minutes at 64 px. Its non-paper choices are
    # decided on 3 seeds x 4 real categories under the rule of docs/decisions.md (bench/decide.py):
    # image_score=auto, feature_stages=2 and local_stage=2 won; the memory bank's per-image centring did
    # not (deleted), nor did dropping the whole-image jitter (the paper's 0.1 stays); training beat its
    # untrained twin on tire only, so the twin guard (untrained_fallback) decides per run. Combining the two
    # instead (standardised scores averaged) lost on tire by more than its spread (-0.026, spread 0.020).
    "demo": TrainConfig(
        preset="demo",
        untrained_fallback=True,
        image_size=64,
        steps=250,
        batch_size=16,
        image_score="auto",
        local_stage=2,
        feature_stages=2,
        # The patch model: one Gaussian per grid position (+0.093 [+0.042, +0.164] pixel AUROC on
        # validation over the paper's shared one; the k-NN bank won less and lost to it) and no map
        # smoothing (+0.004 [+0.001, +0.008]).
        local_density="per_location",
        map_sigma=0.0,
        checkpoint_every=50,
        log_every=10,
    ),
    # The best detector this project trains in about 10 minutes per category on a 2-core CPU with native
    # bf16 (an hour in fp32 on an AVX2-only one: bench/results/train_step_avx2.json). Decided on
    # 3 seeds x 4 real categories (docs/decisions.md; the preset as first decided is `short-v1`): layer1
    # stacked onto layer2 (+0.001) and layer2's map instead of layer3's (+0.003) did not win there, so the
    # defaults (layer3 alone) stay; dropping the whole-image jitter was adopted on one seed and lost at
    # demo's budget on three, so the paper's 0.1 is back. Measured again as it is now: image_score=auto
    # wins (+0.027 [+0.005, +0.057]) with all three candidates staying in its list; training beats its
    # twin overall (+0.094) but not on bottle (+0.005 [-0.009, +0.031]), so the twin guard decides per run.
    "short": TrainConfig(
        preset="short",
        untrained_fallback=True,
        image_size=128,
        steps=600,
        batch_size=32,
        image_score="auto",
        # The patch model: one Gaussian per grid position (+0.067 [+0.024, +0.108] pixel AUROC on
        # validation over the paper's shared one; the k-NN bank won less and lost to it); the paper's
        # smoothing stays (no smoothing: +0.000 [-0.005, +0.005]).
        local_density="per_location",
        checkpoint_every=100,
        log_every=25,
    ),
    # The test suite's budget: about half a minute per category on a 2-core CPU.
    "ci": TrainConfig(
        preset="ci",
        # fp32: the suite compares runs across processes and thread counts to 1e-5, and at 150 steps bf16
        # training moved synth_disc's AUROC by up to 0.1 between seeds (tests/test_precision.py covers bf16).
        amp=False,
        channels_last=False,
        image_size=64,
        steps=150,
        batch_size=8,
        checkpoint_every=50,
        log_every=10,
        eval_batch_size=32,
    ),
}


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``key=value`` strings (``--set``) as config changes: JSON values where they parse, a comma makes a list
    (``augment.area_ratio=0.02,0.1``), anything else a string; the changes go through ``override``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value")
        value: Any
        if "," in raw:
            value = [json.loads(v) if _is_json(v) else v for v in raw.split(",")]
        else:
            value = json.loads(raw) if _is_json(raw) else raw
        out[key.strip()] = value
    return out


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def preset(name: str) -> TrainConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


def read_json_object(path: str | Path, what: str, error: type[ConfigError] = ConfigError) -> dict[str, Any]:
    """A user's JSON file (a config, a search space) as a dict; a missing file, bad JSON or another top
    level is ``error`` naming ``what`` and the path."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise error(f"{what} {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise error(f"{what} {path}: expected a JSON object at the top level")
    return data


def load_config(path: str | Path, *, base: TrainConfig | None = None) -> TrainConfig:
    """Reads a JSON config file: a short difference from a preset (``{"preset": "demo", ...}``)."""
    data = read_json_object(path, "config file")
    start = preset(data["preset"]) if "preset" in data else (base or preset("paper"))
    return start.override({k: v for k, v in data.items() if k != "preset"}, source=str(path))
