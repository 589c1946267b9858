"""The CutPaste network: a torchvision backbone, an MLP projection head and a linear classifier.

Density estimation uses :meth:`CutPasteNet.embed` (the average-pooled backbone features, 512-d for
ResNet-18), as in the paper; the head and classifier exist only to learn the proxy task.
Inputs are RGB in [0, 1]; ImageNet normalisation happens inside, so a served model takes raw images.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from cutpaste.errors import ConfigError
from cutpaste.model.backbones import BACKBONES

if TYPE_CHECKING:
    from cutpaste.config import TrainConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def as_float_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` or float in [0, 1] -> float ``(B, 3, size, size)`` in [0, 1]."""
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images shaped (B, 3, H, W), got {tuple(images.shape)}")
    x = images.float().div(255) if images.dtype == torch.uint8 else images.float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    # One memory layout whatever the caller's strides (an HWC array permuted is channels-last): convolution
    # picks its kernels by layout, and the same image must get the same score from every entry point.
    return x.contiguous()


def pretrained_weights_path(backbone: str, pretrained: str) -> Path:
    """Where the ImageNet weights for ``backbone`` are read from; never downloads.

    ``"imagenet"`` means torchvision's cache (``$TORCH_HOME/hub/checkpoints``); anything else is a path.
    """
    if pretrained != "imagenet":
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise ConfigError(f"pretrained: weights file not found: {path}")
        return path
    url = BACKBONES[backbone].weights.url
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if not path.is_file():
        raise ConfigError(
            f"pretrained: ImageNet weights for {backbone} not found at {path}; nothing is downloaded. "
            f"Copy {Path(url).name} there (from {url}) or pass --pretrained /path/to/weights.pth"
        )
    return path


def _load_pretrained(encoder: nn.Module, backbone: str, pretrained: str) -> None:
    path = pretrained_weights_path(backbone, pretrained)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"pretrained: cannot read weights file {path}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    head = BACKBONES[backbone].classifier + "."
    state = {k: v for k, v in state.items() if not k.startswith(head)}
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"pretrained: {path} does not fit {backbone} "
            f"(missing {len(missing)} keys, e.g. {missing[:2]}; unexpected {len(unexpected)}, e.g. {unexpected[:2]})"
        )


def build_encoder(backbone: str, pretrained: str | None = None) -> tuple[nn.Module, int]:
    """The backbone with its classifier removed, and the width of its pooled features."""
    if backbone not in BACKBONES:
        raise ConfigError(f"backbone: unknown {backbone!r}; choose one of {', '.join(BACKBONES)}")
    spec = BACKBONES[backbone]
    encoder = spec.build()
    setattr(encoder, spec.classifier, nn.Identity())
    if pretrained:
        _load_pretrained(encoder, backbone, pretrained)
    return encoder, spec.feature_dim


RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")


def stage_width(encoder: nn.Module, stage: int) -> int:
    """Channels of a ResNet stage's output (``stage`` 1..4)."""
    block = getattr(encoder, RESNET_STAGES[stage - 1])[-1]
    last = block.bn3 if hasattr(block, "bn3") else block.bn2
    return int(last.num_features)


class CutPasteNet(nn.Module):
    def __init__(
        self,
        backbone: str = "resnet18",
        *,
        head_depth: int = 2,
        head_width: int = 512,
        num_classes: int = 3,
        pretrained: str | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.encoder, pooled_dim = build_encoder(backbone, pretrained)
        # Width of what :meth:`embed` returns (the density's features): the pooled last stage.
        self.feature_dim = pooled_dim
        layers: list[nn.Module] = []
        width = pooled_dim
        for _ in range(head_depth):
            layers += [nn.Linear(width, head_width), nn.BatchNorm1d(head_width), nn.ReLU(inplace=True)]
            width = head_width
        self.head = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def stage_maps(self, images: torch.Tensor, stages: tuple[int, ...]) -> list[torch.Tensor]:
        """ResNet feature maps ``(B, C_s, H_s, W_s)`` of the given stages (1..4), from one forward pass."""
        e = self.encoder
        if not hasattr(e, "layer4"):
            raise ConfigError("stage feature maps need a ResNet backbone")
        x = e.maxpool(e.relu(e.bn1(e.conv1((images - self.mean) / self.std))))
        out: list[torch.Tensor] = []
        for index, name in enumerate(RESNET_STAGES, start=1):
            x = getattr(e, name)(x)
            if index in stages:
                out.append(x)
            if index >= max(stages):
                break
        return out

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> ``(B, feature_dim)``: the pooled last stage (the paper's)."""
        return self.encoder((images - self.mean) / self.std)

    def embed_with_maps(self, images: torch.Tensor, stages: tuple[int, ...]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One forward pass -> (:meth:`embed` ``(B, feature_dim)``, the feature maps of ``stages``, each
        ``(B, C_s, h_s, w_s)``, in the order given)."""
        wanted = tuple(sorted({*stages, 4}))
        maps = dict(zip(wanted, self.stage_maps(images, wanted), strict=True))
        return maps[4].float().mean((2, 3)), [maps[s] for s in stages]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(pooled last-stage features (B, D), logits (B, num_classes))``; the proxy task
        trains on the pooled last stage."""
        features = self.encoder((images - self.mean) / self.std)
        return features, self.classifier(self.head(features))


def build_model(config: TrainConfig) -> CutPasteNet:
    return CutPasteNet(
        config.backbone,
        head_depth=config.head_depth,
        head_width=config.head_width,
        num_classes=config.num_classes,
        pretrained=config.pretrained,
    )
