"""A detector as one ONNX graph: 8-bit RGB images in, image scores and anomaly maps out.

The graph takes ``images`` ``(B, H, W, 3)`` uint8 and returns ``score`` ``(B,)`` float64 and ``anomaly_map``
``(B, S, S)`` float32 at the model's input resolution ``S = image_size``: what :meth:`Detector.anomaly_maps`
returns in its ``auto`` mode (``score`` is also what :meth:`Detector.score` returns). Everything between is
in the graph: the resize to ``S`` (torch's antialiased bilinear, as :func:`cutpaste.model.network.as_float_images`;
an identity at ``S``), the ImageNet normalisation, the encoder and the detector's resolved scorer.

The scorers are written here again as tensor operations on registered buffers, because the library's own
``score`` methods loop over chunks of a data-dependent count (the memory bank) or read tensors of plain
dataclasses; the test suite holds each to the library's numbers. GradCAM needs the gradient of the score,
which an inference graph cannot take: for the pooled embedding it is written out in closed form (the
score's gradient through the L2 normalisations and the average pool is the same at every position).

Exporter: ``torch.onnx.export(dynamo=True)`` (it needs onnxscript), torch's default since 2.9. The
TorchScript exporter cannot write the antialiased resize (``aten::_upsample_bilinear2d_aa`` has no symbolic
there, checked with torch 2.14); the dynamo exporter writes it as ``Resize`` with ``antialias=1`` (opset
18), which onnxruntime computes to within 3e-7 of torch on [0, 1] pixels, and takes the batch, height and
width as symbolic dimensions. Every graph is run once with onnxruntime on probe images before it is
written, and refused unless it scores as PyTorch does.
"""

from __future__ import annotations

import io
import warnings
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cutpaste import __version__
from cutpaste.atomic import atomic_write_bytes
from cutpaste.detector import Detector, _patch_image_scores, _pixel_maps
from cutpaste.errors import ExportError
from cutpaste.model.network import CutPasteNet
from cutpaste.model.patches import grid_size
from cutpaste.scoring.feature_maps import grid_to_maps
from cutpaste.scoring.gaussian import GaussianDensity
from cutpaste.scoring.grid_gaussians import LocalDensity
from cutpaste.scoring.memory_bank import MemoryBank

OPSET = 18
INPUT = "images"
OUTPUTS = ("score", "anomaly_map")
# Agreement with PyTorch: |onnx - torch| <= RTOL * |torch| + ATOL * max|torch| (per output, over the batch).
# The absolute part is on the output's own scale: a map's cold pixels and a score near 0
# have no meaningful relative error.
RTOL = 1e-4
ATOL = 1e-4
META_PREFIX = "cutpaste."


def _resize(images: Tensor, size: int) -> Tensor:
    """``(B, H, W, 3)`` uint8 -> ``(B, 3, size, size)`` float in [0, 1], as ``as_float_images`` does (the
    resize runs at every size: at ``size`` it is an identity, and a branch on the shape would fix H and W)."""
    x = images.permute(0, 3, 1, 2).float().div(255)
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).contiguous()


class _GlobalGaussian(nn.Module):
    """:meth:`GaussianDensity.score`: Mahalanobis distance of the L2-normalised embedding, in float64."""

    def __init__(self, density: GaussianDensity) -> None:
        super().__init__()
        self.register_buffer("mean", density.mean.double().clone())
        self.register_buffer("precision", density.precision.double().clone())

    def forward(self, features: Tensor) -> Tensor:
        delta = F.normalize(features.double(), dim=-1) - self.mean
        return ((delta @ self.precision) * delta).sum(-1).clamp_min(0).sqrt()


class _GridGaussians(nn.Module):
    """:meth:`LocalDensity.score`: ``(B, L, D)`` -> ``(B, L)`` float32, one Gaussian per position or shared."""

    def __init__(self, density: LocalDensity) -> None:
        super().__init__()
        self.shared = density.layout == "shared"
        self.projected = density.basis is not None
        self.register_buffer("mean", density.mean.float().clone())
        self.register_buffer("precision", density.precision.float().clone())
        if density.basis is not None and density.center is not None:
            self.register_buffer("center", density.center.float().clone())
            self.register_buffer("basis", density.basis.float().clone())

    def forward(self, features: Tensor) -> Tensor:
        x = F.normalize(features.float(), dim=-1)
        if self.projected:
            x = (x - self.center) @ self.basis
        delta = x - self.mean
        if self.shared:
            squared = ((delta @ self.precision[0]) * delta).sum(-1)
        else:
            squared = torch.einsum("nlk,lkj,nlj->nl", delta, self.precision, delta)
        return squared.clamp_min(0).sqrt()


class _GridBank(nn.Module):
    """:meth:`MemoryBank.score` in one pass (no chunks): the same neighbours, the same exact distances.
    Its distance matrix holds ``B * L * M`` floats: batch size is the caller's memory budget."""

    def __init__(self, bank: MemoryBank) -> None:
        super().__init__()
        self.k = int(bank.k)
        self.register_buffer("bank", bank.bank.float().clone())
        self.register_buffer("bank_sq", bank.bank.float().square().sum(1))

    def forward(self, features: Tensor) -> Tensor:
        flat = features.float().reshape(-1, features.shape[-1])
        squared = torch.addmm(self.bank_sq[None], flat, self.bank.T, alpha=-2.0) + flat.square().sum(1, keepdim=True)
        nearest = squared.topk(self.k, dim=1, largest=False).indices
        distances = (flat[:, None] - self.bank[nearest]).norm(dim=2).mean(1)
        return distances.reshape(features.shape[0], features.shape[1])


def scorer_name(detector: Any) -> str:
    """The scorer in words, for metadata and errors: ``image score local, feature maps knn, max``."""
    if not isinstance(detector, Detector):
        return type(detector).__name__
    cfg = detector.config
    if detector.is_patch_model:
        return f"patch model ({detector.meta.get('local_layout', cfg.local_density)}, {cfg.patch_score})"
    if detector.grid is None:
        return "image score global (pooled embedding), GradCAM maps"
    scoring = detector.scoring
    layout = detector.meta.get("local_layout", scoring.feature_density)
    return f"image score {scoring.image_score}, feature maps {layout}, {scoring.feature_score}"


def _grid_scorer(scorer: object, name: str) -> nn.Module:
    if isinstance(scorer, MemoryBank):
        return _GridBank(scorer)
    if isinstance(scorer, LocalDensity) and scorer.layout in ("shared", "per_location"):
        return _GridGaussians(scorer)
    kind = getattr(scorer, "layout", type(scorer).__name__)
    raise ExportError(f"{name}: the grid scorer {kind!r} cannot be exported to ONNX")


class ScoringGraph(nn.Module):
    """A loaded detector's ``anomaly_maps(images, "auto")`` as pure tensor operations on uint8 HWC input."""

    def __init__(self, detector: Detector) -> None:
        super().__init__()
        name = scorer_name(detector)
        if not isinstance(detector, Detector):
            raise ExportError(f"{name}: only a single detector can be exported to ONNX (export an ensemble's members)")
        cfg = detector.config
        self.model: CutPasteNet = detector.model
        self.size, self.config, self.meta, self.scoring = cfg.image_size, cfg, detector.meta, detector.scoring
        self.density = _GlobalGaussian(detector.density)
        if detector.is_patch_model:
            self.mode = "dense"
            self.grid = grid_size(cfg.image_size, cfg.patch_size, cfg.patch_stride)
            self.local = _grid_scorer(detector.grid, name)
        elif detector.grid is not None:
            self.mode = "local"
            self.local = _grid_scorer(detector.grid, name)
        else:
            self.mode = "gradcam"
            self._check_gradcam(name)

    def _check_gradcam(self, name: str) -> None:
        encoder = self.model.encoder
        if hasattr(encoder, "layer4"):
            return
        if not hasattr(encoder, "features"):
            raise ExportError(f"{name}: GradCAM of a {type(encoder).__name__} encoder cannot be exported to ONNX")

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = _resize(images, self.size)
        if self.mode == "dense":
            return self._dense(x)
        if self.mode == "local":
            return self._local(x)
        return self._gradcam(x)

    def _dense(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The patch model: every patch on the grid through the encoder, its density, the pixel map."""
        cfg, grid = self.config, self.grid
        patches = x.unfold(2, cfg.patch_size, cfg.patch_stride).unfold(3, cfg.patch_size, cfg.patch_stride)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, cfg.patch_size, cfg.patch_size)
        features = self.model.embed(patches).float().reshape(x.shape[0], grid * grid, -1)
        scores = self.local(features).reshape(-1, grid, grid)
        maps = _pixel_maps(scores, cfg)
        return _patch_image_scores(scores, maps, cfg), maps

    def _local(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The image model with feature-map scorers: :meth:`Detector._image_scores` then ``_image_score``."""
        cfg = self.config
        embedding, maps = self.model.embed_with_maps(x, cfg.feature_map_stages)
        pooled = torch.cat([F.adaptive_avg_pool2d(m.float(), cfg.local_grid) for m in maps], dim=1)
        grid = self.local(pooled.flatten(2).transpose(1, 2)).reshape(-1, cfg.local_grid, cfg.local_grid)
        global_scores = self.density(embedding.float())
        return self._image_score(global_scores, grid), grid_to_maps(grid, self.size)

    def _image_score(self, global_scores: Tensor, grid: Tensor) -> Tensor:
        if self.scoring.image_score == "global":
            return global_scores
        flat = grid.flatten(1).double()
        local = flat.amax(1)
        if self.scoring.feature_score == "max-median":  # torch's median of an even count is the lower middle value
            local = local - flat.sort(1).values[:, (flat.shape[1] - 1) // 2]
        return local

    def _gradcam(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """:func:`cutpaste.localization.gradcam.gradcam_maps` with the gradient of the squared distance written out."""
        embedding, activation = self._embedding_and_activation(x)
        mean, precision = self.density.mean.float(), self.density.precision.float()
        normalised = F.normalize(embedding, dim=-1)
        delta = normalised - mean
        squared = ((delta @ precision) * delta).sum(-1)
        grad = _normalise_backward(embedding, delta @ (precision + precision.T))
        weights = grad / (activation.shape[2] * activation.shape[3])  # d squared / d A, equal at every position
        cam = F.relu((weights[:, :, None, None] * activation).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=(self.size, self.size), mode="bilinear", align_corners=False)[:, 0]
        peak = cam.flatten(1).amax(1).clamp_min(1e-12)
        distance = squared.clamp_min(0).sqrt()
        return self.density(embedding), cam / peak[:, None, None] * distance[:, None, None]

    def _embedding_and_activation(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The embedding ``embed`` gives (the activation's average pool) and GradCAM's target activation."""
        model = self.model
        if hasattr(model.encoder, "layer4"):
            activation = model.stage_maps(x, (4,))[0].float()
        else:
            activation = model.encoder.features((x - model.mean) / model.std).float()
        return activation.mean((2, 3)), activation


def _normalise_backward(x: Tensor, grad: Tensor) -> Tensor:
    """The gradient with respect to ``x`` of a function of ``F.normalize(x)``, given its gradient ``grad``
    with respect to the normalised vector: the tangential part, divided by the norm."""
    norm = x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    unit = x / norm
    return (grad - unit * (unit * grad).sum(1, keepdim=True)) / norm


def metadata(detector: Detector, sha256: str) -> dict[str, str]:
    """``metadata_props`` of the graph: what a server needs to decide and to know what it runs."""
    low, high = detector.map_range
    return {
        f"{META_PREFIX}threshold": repr(float(detector.threshold)),
        f"{META_PREFIX}sha256": sha256,
        f"{META_PREFIX}category": detector.category,
        f"{META_PREFIX}image_size": str(detector.config.image_size),
        f"{META_PREFIX}scorer": scorer_name(detector),
        f"{META_PREFIX}map_range": f"{low!r},{high!r}",
        f"{META_PREFIX}version": __version__,
        f"{META_PREFIX}io": f"{INPUT} (B,H,W,3) uint8 RGB -> score (B,) float64, anomaly_map (B,S,S) float32",
    }


def probe_images(size: int, batch: int = 2, seed: int = 0) -> Tensor:
    """``(batch, size, size, 3)`` uint8: smooth random colour fields, the export's example and check input."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, 6, 6, generator=generator)
    fine = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    fine = fine + 0.1 * torch.rand(batch, 3, size, size, generator=generator)
    return (fine.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def build_onnx(detector: Detector, sha256: str) -> bytes:
    """The serialised ONNX model of ``detector``, batch (and H, W) dynamic, metadata set; nothing written."""
    graph = ScoringGraph(detector).eval()
    example = probe_images(detector.config.image_size)
    dims = {
        0: torch.export.Dim("batch", min=1),
        1: torch.export.Dim("height", min=2),
        2: torch.export.Dim("width", min=2),
    }
    with torch.no_grad(), warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                graph,
                (example,),
                dynamo=True,
                input_names=[INPUT],
                output_names=list(OUTPUTS),
                dynamic_shapes=(dims,),
                opset_version=OPSET,
                external_data=False,
                verbose=False,
            )
        except Exception as exc:  # the exporter's own errors are pages long: the root cause's first line
            raise ExportError(f"{scorer_name(detector)}: torch.onnx.export failed: {_root_cause(exc)}") from exc
    proto = program.model_proto
    for key, value in metadata(detector, sha256).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name, proto.producer_version = "cutpaste", __version__
    return proto.SerializeToString()


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def run_onnx(session: Any, images: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``(B, H, W, 3)`` uint8 through an onnxruntime session -> (scores, maps) as numpy arrays."""
    scores, maps = session.run(list(OUTPUTS), {INPUT: images.numpy()})
    return scores, maps


def max_difference(actual: np.ndarray, expected: np.ndarray) -> float:
    """The largest ``|actual - expected| / (|expected| + ATOL / RTOL * max|expected|)``: at most RTOL when
    the outputs agree to the tolerance the module docstring states."""
    expected = np.asarray(expected, dtype=np.float64)
    floor = ATOL / RTOL * float(np.abs(expected).max(initial=0.0))
    scale = np.abs(expected) + max(floor, 1e-30)
    return float((np.abs(np.asarray(actual, dtype=np.float64) - expected) / scale).max(initial=0.0))


def check_against_torch(detector: Detector, model_bytes: bytes, images: Tensor) -> dict[str, float]:
    """Runs the graph on ``images`` (B, H, W, 3) uint8 and the detector on the same; the worst
    :func:`max_difference` of each output. Raises ExportError where either exceeds ``RTOL``."""
    import onnxruntime

    session = onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    scores, maps = run_onnx(session, images)
    with torch.no_grad():
        ref_scores, ref_maps = detector.anomaly_maps(images.permute(0, 3, 1, 2))
    diff = {"score": max_difference(scores, ref_scores.numpy()), "anomaly_map": max_difference(maps, ref_maps.numpy())}
    worst = max(diff, key=diff.__getitem__)
    if diff[worst] > RTOL:
        raise ExportError(
            f"{scorer_name(detector)}: the ONNX graph's {worst} differs from PyTorch's by {diff[worst]:.2e} "
            f"(relative; allowed {RTOL:.0e}): not written"
        )
    return diff


def export_onnx(detector: Detector, out: str | Path, *, sha256: str, verify: bool = True) -> Path:
    """Writes ``detector`` as one ONNX graph to ``out`` (atomically), after checking it on probe images."""
    model_bytes = build_onnx(detector, sha256)
    if verify:
        check_against_torch(detector, model_bytes, probe_images(detector.config.image_size, batch=3, seed=1))
    return atomic_write_bytes(model_bytes, out)
