"""``cutpaste export --format onnx``: the graph scores a whole test split as PyTorch does, for every scorer a
detector can resolve to, at any batch size; scorers it cannot hold and bad input are one-line errors."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from cutpaste.cli import main  # noqa: E402
from cutpaste.data.images import load_images  # noqa: E402
from cutpaste.data.layout import list_samples  # noqa: E402
from cutpaste.data.synth import generate_dataset  # noqa: E402
from cutpaste.detector import BUNDLE_NAME, Detector  # noqa: E402
from cutpaste.ensemble import build_ensemble  # noqa: E402
from cutpaste.errors import ExportError  # noqa: E402
from cutpaste.fit import fit_detector  # noqa: E402
from cutpaste.integrity import sha256_file  # noqa: E402
from cutpaste.model.network import build_model  # noqa: E402
from cutpaste.presets import preset  # noqa: E402
from cutpaste.serving.export import ExportResult, export_model  # noqa: E402
from cutpaste.serving.onnx_graph import RTOL, build_onnx, check_against_torch, max_difference, probe_images  # noqa: E402
from cutpaste.train.loop import train_model  # noqa: E402

CATEGORY = "synth_disc"
SIZE = 64
# Every score a detector resolves to (image_score=auto picks among the image-model ones), with the maps each
# draws: GradCAM for the global Gaussian alone, the feature-map grid, or the patch model's dense map.
SCORERS: dict[str, dict] = {
    "global": {},
    "local-per_location": {"image_score": "local", "feature_density": "per_location"},
    "local-shared-two-stages": {"image_score": "local", "feature_density": "shared", "feature_stages": 2},
    "knn": {"image_score": "local", "feature_density": "knn"},
    "knn-relative": {"image_score": "local", "feature_density": "knn", "feature_score": "max-median"},
    "global-with-knn-maps": {"image_score": "global", "feature_density": "knn", "map_scorer": "local"},
    "patch-knn": {"patch_size": 32, "patch_stride": 8, "local_density": "knn"},
    "patch-per_location-map_max": {
        "patch_size": 32,
        "patch_stride": 8,
        "local_density": "per_location",
        "patch_score": "map_max",
    },
}


@dataclass
class Trained:
    model: torch.nn.Module
    config: object
    train: torch.Tensor
    test: torch.Tensor  # the whole test split, (N, 3, S, S) uint8 as evaluate and predict load it


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Trained:
    """One tiny encoder trained at the ci preset (4 steps: the weights only need to be trained ones, not good
    ones); every scorer is fitted on it, as ``fit_detector`` fits a freshly trained model."""
    root = tmp_path_factory.mktemp("export")
    generate_dataset(
        root / "data", categories=[CATEGORY], size=SIZE, train_count=12, test_good=3, test_defect_per_type=1
    )
    config = preset("ci").override({"steps": 4, "image_size": SIZE})
    paths = {split: [s.path for s in list_samples(root / "data", CATEGORY, split)] for split in ("train", "test")}
    train = load_images(paths["train"], SIZE)
    model = train_model(config, train, device="cpu", progress=False).model.eval()
    return Trained(model, config, train, load_images(paths["test"], SIZE))


def _fit(trained: Trained, changes: dict) -> Detector:
    config = trained.config.override(changes)
    model = build_model(config)  # the embedding is the network's: the trained weights in a model built for it
    model.load_state_dict(trained.model.state_dict())
    model.eval()
    return fit_detector(model, trained.train, config, category=CATEGORY)


def _hwc(images: torch.Tensor) -> np.ndarray:
    return images.permute(0, 2, 3, 1).contiguous().numpy()


@dataclass
class Exported:
    saved: Path  # the model directory
    onnx: Path
    result: ExportResult


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> Callable[[str], Exported]:
    """Each scorer fitted, saved and exported once (``export_model``, as the CLI calls it), on demand."""
    cache: dict[str, Exported] = {}

    def get(name: str) -> Exported:
        if name not in cache:
            root = tmp_path_factory.mktemp(name)
            _fit(trained, SCORERS[name]).save(root / "model")
            cache[name] = Exported(
                root / "model", root / "model.onnx", export_model(root / "model", root / "model.onnx")
            )
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(SCORERS))
def test_the_graph_scores_the_whole_test_split_as_pytorch(trained, exported, name):
    export = exported(name)
    detector = Detector.load(export.saved)
    with torch.no_grad():
        expected_scores, expected_maps = detector.anomaly_maps(trained.test)
    assert torch.equal(expected_scores, detector.score(trained.test)), "the map's score is the reported score"
    session = onnxruntime.InferenceSession(str(export.onnx), providers=["CPUExecutionProvider"])
    # Exported at batch 2; run at 1, 5 and 1 (the split has 7 images).
    parts = [session.run(None, {"images": _hwc(trained.test[a:b])}) for a, b in ((0, 1), (1, 6), (6, 7))]
    scores = np.concatenate([p[0] for p in parts])
    maps = np.concatenate([p[1] for p in parts])
    assert scores.shape == (7,) and scores.dtype == np.float64
    assert maps.shape == (7, SIZE, SIZE) and maps.dtype == np.float32
    assert max_difference(scores, expected_scores.numpy()) <= RTOL
    assert max_difference(maps, expected_maps.numpy()) <= RTOL
    # Another (non-square) size is resized in the graph as the library resizes a tensor of that size.
    raw = F.interpolate(trained.test[:2].float(), size=(96, 80), mode="bilinear").round().to(torch.uint8)
    scores, maps = session.run(None, {"images": _hwc(raw)})
    with torch.no_grad():
        expected_scores, expected_maps = detector.anomaly_maps(raw)
    assert max_difference(scores, expected_scores.numpy()) <= RTOL
    assert max_difference(maps, expected_maps.numpy()) <= RTOL
    meta = {p.key: p.value for p in onnx.load(str(export.onnx), load_external_data=False).metadata_props}
    assert float(meta["cutpaste.threshold"]) == detector.threshold
    assert meta["cutpaste.sha256"] == sha256_file(export.saved / BUNDLE_NAME) == export.result.sha256
    assert meta["cutpaste.image_size"] == str(SIZE) and meta["cutpaste.category"] == CATEGORY


def test_the_check_catches_a_graph_that_scores_differently(exported):
    """The check before writing can fail: the graph of one detector against another's scores."""
    export = exported("knn")
    detector = Detector.load(export.saved)
    model_bytes = export.onnx.read_bytes()
    assert max(check_against_torch(detector, model_bytes, probe_images(SIZE)).values()) <= RTOL
    # The grid's maximum less its median against the graph's maximum: scores move, maps do not.
    detector.scoring = dataclasses.replace(detector.scoring, feature_score="max-median")
    with pytest.raises(ExportError, match=r"score differs from PyTorch's by .*: not written"):
        check_against_torch(detector, model_bytes, probe_images(SIZE))


def test_the_batch_axis_is_dynamic_and_the_graph_reads_uint8_hwc(exported):
    graph = onnx.load(str(exported("global").onnx)).graph
    (images,) = graph.input
    dims = images.type.tensor_type.shape.dim
    assert images.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert dims[0].dim_param and not dims[0].dim_value and dims[3].dim_value == 3
    assert [o.name for o in graph.output] == ["score", "anomaly_map"]


@dataclass
class _FutureScorer:
    """A grid scorer of a kind the exporter does not know."""

    layout: str = "normalising_flow"
    grid: int = 8


def test_a_scorer_that_cannot_be_exported_is_a_one_line_error_and_no_file(trained, tmp_path, capsys):
    detector = _fit(trained, SCORERS["knn"])
    detector.grid = _FutureScorer()  # type: ignore[assignment]
    out = tmp_path / "model.onnx"
    out.write_bytes(b"the previous export")
    with pytest.raises(ExportError, match="grid scorer 'normalising_flow' cannot be exported") as caught:
        build_onnx(detector, "0" * 64)
    assert "image score local, feature maps knn" in str(caught.value) and "\n" not in str(caught.value)
    members = [_fit(trained, {}), _fit(trained, {"image_score": "local"})]
    build_ensemble(members, trained.train).save(tmp_path / "ensemble")
    assert main(["export", "--model", str(tmp_path / "ensemble"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "EnsembleDetector: only a single detector can be exported" in err and len(err.splitlines()) == 1
    assert out.read_bytes() == b"the previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ensemble", "model.onnx"], "no temporary file is left"


def test_cli_exports_and_names_the_flag_at_fault(trained, tmp_path, capsys, monkeypatch):
    _fit(trained, {}).save(tmp_path / "model")
    out = tmp_path / "out" / "model.onnx"
    assert main(["export", "--model", str(tmp_path / "model"), "--format", "onnx", "--out", str(out)]) == 0
    assert out.is_file() and f"wrote {out}" in capsys.readouterr().out
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    bad = {
        "--model: model directory not found": ["--model", str(tmp_path / "nowhere"), "--out", str(out)],
        "--format: unknown 'tflite'; choose one of onnx": ["--model", str(tmp_path / "model"), "--format", "tflite"],
        "--out: cannot write": ["--model", str(tmp_path / "model"), "--out", str(blocker / "model.onnx")],
        "is a directory": ["--model", str(tmp_path / "model"), "--out", str(tmp_path)],
    }
    for message, args in bad.items():
        args = args if "--out" in args else [*args, "--out", str(out)]
        assert main(["export", *args]) == 2, message
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if the onnx extra were not installed
    assert main(["export", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "again.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs the Python package 'onnxscript'" in err and "cutpaste[onnx]" in err
    assert not (tmp_path / "again.onnx").exists()


def test_the_core_library_does_not_need_onnx():
    """The optional packages are imported only when a model is exported."""
    import subprocess

    code = (
        "import sys\n"
        "import cutpaste.cli, cutpaste.serving.export, cutpaste.serving.onnx_graph\n"
        "cutpaste.cli.build_parser()\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'onnx', 'onnxruntime', 'onnxscript'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd="/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
