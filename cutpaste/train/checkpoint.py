"""Training checkpoints: the file a run resumes from, and the check that it belongs to the same run.

A checkpoint holds the config, the model, optimiser, schedule and generator states and the history;
it is read as data only (:mod:`cutpaste.integrity`), since checkpoints travel through shared storage. A
run resumes only from a checkpoint whose training part of the config (:func:`cutpaste.config.config_part`)
is exactly its own: scoring and execution fields may differ, since they do not change the weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cutpaste.atomic import atomic_write_text
from cutpaste.config import TrainConfig, config_part, flatten
from cutpaste.errors import ConfigError, ModelBundleError
from cutpaste.integrity import load_weights

CHECKPOINT_FORMAT = 3  # 2, 3: configs without the deleted options (see detector.BUNDLE_FORMAT)
CHECKPOINT_NAME = "last.pt"


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A training checkpoint, read as data only (checkpoints travel through shared storage too)."""
    state = load_weights(path, kind="checkpoint")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ModelBundleError(f"checkpoint {path} has format {found!r}, this version reads {CHECKPOINT_FORMAT}")
    return state


def check_same_run(saved: dict[str, Any], config: TrainConfig, path: Path) -> None:
    """Refuses a checkpoint whose training key differs from ``config``'s, naming the first fields that do."""
    mine = config_part(config, "training")
    # A field missing from the saved config ran with its default.
    theirs = config_part({**flatten(TrainConfig()), **flatten(saved)}, "training")
    differ = sorted(k for k in mine.keys() | theirs.keys() if _norm(mine.get(k)) != _norm(theirs.get(k)))
    if differ:
        detail = ", ".join(f"{k}: {theirs.get(k)!r} -> {mine.get(k)!r}" for k in differ[:5])
        raise ConfigError(
            f"checkpoint {path} belongs to a run with another config ({detail}); "
            "use a new output directory or start over with --restart"
        )


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def write_history(history: list[dict[str, float]], path: Path) -> None:
    atomic_write_text("".join(json.dumps(r) + "\n" for r in history), path)
