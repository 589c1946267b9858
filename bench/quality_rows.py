"""The rows of the quality matrix (``bench/quality.py``): the paper's choices and what each row changes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cutpaste.config import AugmentConfig

# The paper's choices for the image model; option rows change one of them.
PAPER_CHOICES: dict[str, Any] = {
    "variant": "3way",
    "image_score": "global",
    "patch_size": 0,
    # The whole image's colour jitter before any view is made (AugmentConfig's default, 0.1, as the demo
    # and short presets).
    "augment.pre_jitter": AugmentConfig().pre_jitter,
}


@dataclass(frozen=True)
class Row:
    """One line of the matrix: how its config is built and whether it trains."""

    description: str
    changes: dict[str, Any]
    train: bool = True
    # Built from the short preset instead of --preset.
    short: bool = False


ROWS: dict[str, Row] = {
    "pixel-stats": Row("per-image colour mean and std, one Gaussian", {}, train=False),
    "untrained": Row("paper-image with random weights", {}, train=False),
    "paper-image": Row("3-way CutPaste, SGD, pooled embedding, one Gaussian (the paper's)", {}),
    "patch": Row(
        "patch model: 32 px crops, one shared Gaussian, image score the map maximum",
        {"patch_size": 32, "patch_stride": 8, "local_density": "shared"},
    ),
    "local": Row("paper-image + feature-map Gaussians, image score their maximum", {"image_score": "local"}),
    "auto": Row("paper-image, image score chosen on validation from the training images", {"image_score": "auto"}),
    "auto-one-stage": Row(
        "auto with layer2's feature map alone (no layer1 stacked)", {"image_score": "auto", "feature_stages": 1}
    ),
    "auto-no-pre-jitter": Row(
        "auto trained without the whole-image colour jitter (rejected: docs/decisions.md)",
        {"image_score": "auto", "augment.pre_jitter": 0.0},
    ),
    "short": Row("the short preset (chosen on validation)", {}, short=True),
    "short-global": Row("the short preset's training, the paper's global score", {"image_score": "global"}, short=True),
    "short-local": Row("the short preset's training, feature-map score alone", {"image_score": "local"}, short=True),
    "short-untrained": Row("the short preset's scoring with random weights", {}, train=False, short=True),
    "short-knn": Row(
        "the short preset's training, feature-map k-NN memory bank, image score its maximum",
        {"image_score": "local", "feature_density": "knn"},
        short=True,
    ),
    "short-knn-relative": Row(
        "the short preset's training, feature-map k-NN, image score its maximum less its median",
        {"image_score": "local", "feature_density": "knn", "feature_score": "max-median"},
        short=True,
    ),
    "short-knn-untrained": Row(
        "feature-map k-NN with random weights",
        {"image_score": "local", "feature_density": "knn"},
        train=False,
        short=True,
    ),
}
