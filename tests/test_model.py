import pytest
import torch

from cutpaste.errors import ConfigError
from cutpaste.model.backbones import BACKBONES
from cutpaste.model.network import CutPasteNet, build_model, pretrained_weights_path
from cutpaste.presets import preset


@pytest.mark.parametrize("variant,classes", [("3way", 3), ("normal", 2), ("union", 2)])
def test_logits_and_embeddings(variant, classes):
    model = build_model(preset("ci").override({"variant": variant})).eval()
    x = torch.rand(2, 3, 64, 64)
    features, logits = model(x)
    assert features.shape == (2, 512) and logits.shape == (2, classes)
    assert torch.equal(model.embed(x), features)


@pytest.mark.parametrize("name", ["efficientnet_b0", "resnet50"])
def test_other_backbones_build(name):
    model = CutPasteNet(name, head_depth=1, num_classes=2).eval()
    assert model.embed(torch.rand(1, 3, 64, 64)).shape == (1, BACKBONES[name].feature_dim)


def test_pretrained_never_downloads_and_names_the_missing_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(ConfigError, match=r"resnet18-f37072fd.pth"):
        pretrained_weights_path("resnet18", "imagenet")
    with pytest.raises(ConfigError, match=r"weights file not found: .*nope\.pth"):
        CutPasteNet(pretrained=str(tmp_path / "nope.pth"))


def test_pretrained_from_a_local_file(tmp_path, monkeypatch):
    # A torchvision-format state dict (with its fc layer) saved where the torchvision cache would be.
    from torchvision.models import resnet18

    reference = resnet18(weights=None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    target = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    target.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), target)
    model = CutPasteNet(pretrained="imagenet")
    assert torch.equal(model.encoder.conv1.weight, reference.conv1.weight)
    torch.save({"garbage": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(ConfigError, match="does not fit resnet18"):
        CutPasteNet(pretrained=str(tmp_path / "wrong.pth"))


def test_an_image_scores_the_same_whatever_the_memory_layout_it_arrives_in():
    # An HWC array permuted to CHW is channels-last in memory; a served batch (B, H, W, 3) permuted is too,
    # with another batch stride. Convolution picks kernels by layout, so scoring first makes it one layout.
    from cutpaste.fit import fit_detector

    scoring = {"image_score": "local", "feature_density": "knn", "feature_score": "max-median", "local_grid": 4}
    config = preset("short").override({**scoring, "image_size": 64})
    images = torch.randint(0, 256, (12, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    detector = fit_detector(build_model(config).eval(), images, config, category="widget")
    hwc = images[0].permute(1, 2, 0).contiguous()
    one = detector.score(hwc.permute(2, 0, 1)[None])
    batch = detector.score(hwc[None].contiguous().permute(0, 3, 1, 2))
    assert torch.equal(one, batch) and torch.equal(one, detector.score(images[:1]))
