"""The backbone registry: which torchvision networks CutPaste can use, their feature widths and weights.

A module of its own so that both :mod:`cutpaste.config` (validating ``backbone``) and :mod:`cutpaste.model.network`
(building it) can read it without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn
from torchvision import models


@dataclass(frozen=True)
class Backbone:
    build: Callable[[], nn.Module]
    feature_dim: int
    weights: models.WeightsEnum
    # Name of the final classifier attribute that is replaced by Identity.
    classifier: str


BACKBONES: dict[str, Backbone] = {
    "resnet18": Backbone(lambda: models.resnet18(weights=None), 512, models.ResNet18_Weights.IMAGENET1K_V1, "fc"),
    "resnet50": Backbone(lambda: models.resnet50(weights=None), 2048, models.ResNet50_Weights.IMAGENET1K_V1, "fc"),
    "efficientnet_b0": Backbone(
        lambda: models.efficientnet_b0(weights=None), 1280, models.EfficientNet_B0_Weights.IMAGENET1K_V1, "classifier"
    ),
    "efficientnet_b1": Backbone(
        lambda: models.efficientnet_b1(weights=None), 1280, models.EfficientNet_B1_Weights.IMAGENET1K_V1, "classifier"
    ),
    "efficientnet_b2": Backbone(
        lambda: models.efficientnet_b2(weights=None), 1408, models.EfficientNet_B2_Weights.IMAGENET1K_V1, "classifier"
    ),
    "efficientnet_b3": Backbone(
        lambda: models.efficientnet_b3(weights=None), 1536, models.EfficientNet_B3_Weights.IMAGENET1K_V1, "classifier"
    ),
    "efficientnet_b4": Backbone(
        lambda: models.efficientnet_b4(weights=None), 1792, models.EfficientNet_B4_Weights.IMAGENET1K_V1, "classifier"
    ),
}
